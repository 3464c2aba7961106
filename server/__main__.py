"""``python -m server``: parse the command line into a :class:`ServerConfig`, load the model, serve."""

from __future__ import annotations

import argparse
import logging
import sys

from aiohttp import web

from .app import create_app
from .config import ConfigError, ServerConfig
from .engine import ModelError
from .registry import open_model

log = logging.getLogger("server")


def parse_args(argv: list[str] | None = None) -> ServerConfig:
    defaults = ServerConfig()
    parser = argparse.ArgumentParser(prog="python -m server", description=__doc__)
    parser.add_argument("--host", default=defaults.host, help="address to listen on (default %(default)s)")
    parser.add_argument("--port", type=int, default=defaults.port, help="port (default %(default)s)")
    parser.add_argument("--model", default=None, help="a model name from models/manifest.json or a path to an .onnx file (default: the manifest's default)")
    parser.add_argument("--threads", type=int, default=defaults.threads, help="onnxruntime threads per inference (default %(default)s)")
    parser.add_argument("--max-sessions", type=int, default=defaults.max_sessions, help="concurrent clients (default %(default)s)")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return ServerConfig(host=args.host, port=args.port, model=args.model, threads=args.threads,
                            max_sessions=args.max_sessions)
    except ConfigError as exc:
        parser.error(str(exc))


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    try:
        upscaler, info = open_model(config.model, config.threads)
    except ModelError as exc:
        log.error("cannot start: %s", exc)
        return 2
    log.info("model %s (%s, %s, %s params) from %s", info.name, info.kind, info.precision, info.params, info.path)
    app = create_app(config, upscaler, info)
    web.run_app(app, host=config.host, port=config.port, print=lambda msg: log.info("%s", msg.strip()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
