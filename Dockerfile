FROM python:3.11-slim
WORKDIR /app
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 LEADSLA_HTTP_HOST=0.0.0.0
COPY pyproject.toml README.md ./
COPY leadsla ./leadsla
COPY shared ./shared
COPY services ./services
RUN pip install --no-cache-dir . && useradd --system leadsla
USER leadsla
ENTRYPOINT ["leadsla"]
