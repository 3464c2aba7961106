FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-cache-dir .
EXPOSE 8080
# aiortc needs UDP ports reachable from the browser: run with host networking (see docker-compose.yml), which
# also makes the loopback default reachable from this host only.
CMD ["python", "-m", "server", "--host", "127.0.0.1", "--port", "8080"]
