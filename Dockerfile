FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY digest ./digest
COPY workers ./workers
COPY templates ./templates
RUN pip install --no-cache-dir -e '.[web]'
ENV DIGEST_TEMPLATES_DIR=/app/templates
CMD ["digest", "web", "--host", "0.0.0.0", "--port", "8000"]
