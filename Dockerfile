FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-cache-dir .
EXPOSE 8080
# aiortc needs a UDP port range reachable from the browser: run with host networking (see docker-compose.yml).
CMD ["python", "-m", "server", "--host", "0.0.0.0", "--port", "8080"]
