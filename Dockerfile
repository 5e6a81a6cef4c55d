# The Synapse-NG node image for the kubernetes provider (cluster/k8s/). Build it from the repository root:
#     docker build -t synapse-ng:0.1.0 .        (or: podman build --runtime runc -t synapse-ng:0.1.0 .)
# The builder stage makes the project's wheel and its dependencies' wheels; the final stage installs
# only those wheels, with no compiler and no source tree, and runs as an unprivileged user whose id
# (10001) the manifests' securityContext names.
FROM python:3.11-slim AS builder
WORKDIR /src
COPY pyproject.toml README.md ./
COPY node ./node
COPY cluster ./cluster
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
RUN groupadd --system --gid 10001 synapse \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/synapse-ng --no-create-home --shell /usr/sbin/nologin synapse \
 && mkdir -p /var/lib/synapse-ng /etc/synapse-ng \
 && chown 10001:10001 /var/lib/synapse-ng && chmod 0700 /var/lib/synapse-ng
COPY --from=builder /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels synapse-ng && rm -rf /wheels
USER 10001:10001
WORKDIR /var/lib/synapse-ng
EXPOSE 8000 9000
# The pod mounts its own config (genesis + config.toml) at /etc/synapse-ng and its data volume at
# /var/lib/synapse-ng; cluster/k8s/manifests.py gives the same command explicitly.
ENTRYPOINT ["synapse"]
CMD ["node", "run", "--config", "/etc/synapse-ng/config.toml"]
