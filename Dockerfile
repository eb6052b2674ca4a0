# One image for the API and the workers (docker-compose.yml picks the command).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# libseccomp2: the job sandbox's seccomp filter (worker/sandbox/syscall_filter.py)
RUN apt-get update && apt-get install -y --no-install-recommends libseccomp2 \
    && rm -rf /var/lib/apt/lists/*
RUN useradd --create-home --uid 10001 synflow \
    && mkdir -p /data/artifacts /scratch \
    && chown -R synflow:synflow /data /scratch

WORKDIR /app
COPY pyproject.toml README.md ./
COPY synflow ./synflow
COPY jobs ./jobs
COPY service ./service
COPY worker ./worker
RUN pip install .

USER synflow
# MPLCONFIGDIR: matplotlib's font cache (report.png) on the tmpfs, the root being read-only
ENV SYNFLOW_DATA_DIR=/data \
    SYNFLOW_ARTIFACTS_DIR=/data/artifacts \
    SYNFLOW_SCRATCH_DIR=/scratch \
    MPLCONFIGDIR=/tmp/matplotlib
EXPOSE 8000
CMD ["synflow", "serve", "--host", "0.0.0.0", "--port", "8000"]
