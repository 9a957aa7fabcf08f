# Image for the `pooling-ledger` CLI (consumer, API). See docker-compose.yml.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    POOLING_DATA_DIR=/var/lib/pooling-ledger

WORKDIR /src
COPY pyproject.toml README.md ./
COPY pooling_ledger ./pooling_ledger
COPY ledger ./ledger
COPY consumers ./consumers
COPY projections ./projections
COPY schemas ./schemas
COPY storage ./storage
RUN pip install . \
    && useradd --system --create-home --uid 10001 pooling \
    && mkdir -p /var/lib/pooling-ledger \
    && chown pooling /var/lib/pooling-ledger

USER pooling
WORKDIR /home/pooling
CMD ["pooling-ledger", "--help"]
