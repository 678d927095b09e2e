# The embedded Triggerbus service: one process, state in /data.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY schemas schemas
COPY bus bus
COPY invoker invoker
COPY connectors connectors
COPY triggerbus triggerbus
RUN pip install --no-cache-dir .
VOLUME /data
EXPOSE 8080
ENTRYPOINT ["triggerbus", "serve", "--host", "0.0.0.0", "--port", "8080", "--data-dir", "/data"]
