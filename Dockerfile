# Lifeline in a container, run exactly as the README says: `make run`.
#
#   docker build -t lifeline .
#   docker run -p 8000:8000 -e LIFELINE_DATABASE_URL=postgresql://user:pw@db:5432/lifeline lifeline
#
# With no LIFELINE_DATABASE_URL it uses the embedded SQLite store in /app/data (mount a volume).
# `docker compose up` runs it with PostgreSQL 15 (docker-compose.yml).
FROM python:3.11-slim-bookworm

RUN apt-get update \
 && apt-get install -y --no-install-recommends make \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml Makefile README.md ./
COPY src ./src
# The install half of `make run` (its venv and `pip install -e .[...]`), done at build time so that
# the container starts at once; the CMD below is the README's command itself.
RUN make install

ENV LIFELINE_HOST=0.0.0.0 \
    LIFELINE_PORT=8000 \
    LIFELINE_DATA_DIR=/app/data \
    PYTHONUNBUFFERED=1
EXPOSE 8000
VOLUME ["/app/data"]
STOPSIGNAL SIGTERM
CMD ["make", "run"]
