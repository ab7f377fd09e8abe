# syntax=docker/dockerfile:1
# One image for every refit role. The entry point is `refit`:
#   refit serve                      the HTTP service (HEALTHCHECK probes /readyz)
#   refit db upgrade | refit sync    one-off commands
#   --entrypoint prefect ... worker start --pool cpu|gpu     a Prefect worker
#   a flow run that a Kubernetes work pool starts (its job template runs `env prefect flow-run execute`)
# Settings come from the environment alone (REFIT_*, AWS_*, PREFECT_API_URL); nothing secret is
# built in. docs/how-to/containers.md shows the builds, the push and the work pools.
#
# Build arguments:
#   BASE_IMAGE      any image with python3 (3.11+: tomllib) and its venv module, and CA certificates
#   TORCH_VARIANT   cpu: PyTorch's CPU build (a local wheel when pip's find-links has one, else
#                   PyTorch's CPU index); cuda: PyPI's Linux build of torch, which is the CUDA one.
#                   The build fails if the torch it installed is not of that kind.
#   TORCH_VERSION   the torch release to install
#   WORKER_PACKAGES prefect-kubernetes, for a Prefect worker of a Kubernetes work pool
#   VERSION, GIT_REVISION, SOURCE_URL   the OCI labels
# Pip settings (a private index, a mirror, find-links) reach the build as a secret, so an index URL
# with credentials never enters a layer: --secret id=pipconf,src=pip.conf.
# scripts/container_build.py runs the build with all of this set from the machine it runs on.

ARG BASE_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------------------------
# No file named like a secret may be in what the build copies: the folders below, all that
# .dockerignore lets into the context (podman's bind mount shows the whole folder, .dockerignore
# or not, so the check names them). The context is mounted, not copied, so a secret that is there
# never enters a layer, not even this stage's. CONTEXT_CHECK_ID, new each build, keeps builders
# that do not hash mounted files (buildah) from reusing an earlier verdict.
FROM ${BASE_IMAGE} AS context-check
ARG CONTEXT_CHECK_ID=
RUN --mount=type=bind,target=/context \
    cd /context && echo "checking the build context (${CONTEXT_CHECK_ID:-no id})" \
    && found=$(find pyproject.toml README.md refit models tasks flows sql deployments scripts \
        \( -name '.env' -o -name '.env.*' -o -name '*.pem' -o -name '*.key' -o -name '*.p12' -o -name '*.pfx' \
        -o -iname '*credentials*' -o -iname '*secret*.json' -o -iname '*secret*.y*ml' -o -name 'id_rsa*' \
        -o -name 'id_ed25519*' -o -name 'id_ecdsa*' -o -name '.netrc' -o -name '.pgpass' -o -name '.pypirc' \
        -o -iname '*kubeconfig*' \) -print 2>/dev/null) ; \
    if [ -n "$found" ]; then \
        echo "refusing to build: files named like secrets are in the build context (move them out):" $found >&2; \
        exit 1; \
    fi; \
    echo clean > /context-clean

# ---------------------------------------------------------------------------------------------
# refit's dependencies, from pyproject.toml: the next stage copies this list, not pyproject.toml,
# so that a change elsewhere in pyproject.toml (a test marker, a lint rule) reuses its layers.
FROM ${BASE_IMAGE} AS requirements
COPY pyproject.toml /tmp/pyproject.toml
RUN python3 -c "import tomllib; print('\n'.join(tomllib.load(open('/tmp/pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /requirements.txt

# ---------------------------------------------------------------------------------------------
# torch and refit's dependencies in a virtualenv. These layers change only with the torch build or
# pyproject.toml's dependencies, not with refit's code; the runtime starts from them, so a code
# change rebuilds a few megabytes, not the 2.6 GB of torch and the rest.
FROM ${BASE_IMAGE} AS dependencies
ARG TORCH_VARIANT=cpu
ARG TORCH_VERSION=2.13.0
# What a Prefect worker for a Kubernetes work pool needs besides refit; empty leaves it out.
ARG WORKER_PACKAGES="prefect-kubernetes>=0.8,<1"
# build arguments, not ENV: pip's settings stay out of the image's configuration
ARG PIP_DISABLE_PIP_VERSION_CHECK=1
ARG PIP_CERT=/etc/ssl/certs/ca-certificates.crt
ARG PIP_DEFAULT_TIMEOUT=180
RUN python3 -m venv /opt/refit
RUN --mount=type=secret,id=pipconf \
    --mount=type=cache,target=/root/.cache/pip,sharing=locked \
    set -eu; \
    if [ -s /run/secrets/pipconf ]; then export PIP_CONFIG_FILE=/run/secrets/pipconf; fi; \
    pip=/opt/refit/bin/pip; \
    case "$TORCH_VARIANT" in \
      cpu) \
        mkdir /tmp/torch; \
        if $pip download -q --no-deps --no-index "torch==${TORCH_VERSION}" -d /tmp/torch 2>/dev/null \
           && ls /tmp/torch/torch-*+cpu-*.whl >/dev/null 2>&1; then \
          $pip install /tmp/torch/torch-*+cpu-*.whl; \
        else \
          $pip install "torch==${TORCH_VERSION}" --index-url https://download.pytorch.org/whl/cpu \
            --extra-index-url https://pypi.org/simple; \
        fi; \
        rm -rf /tmp/torch ;; \
      cuda) $pip install "torch==${TORCH_VERSION}" ;; \
      *) echo "TORCH_VARIANT must be cpu or cuda, not '${TORCH_VARIANT}'" >&2; exit 1 ;; \
    esac; \
    /opt/refit/bin/python -c "import sys, torch; cuda = torch.version.cuda is not None; \
sys.exit(None if cuda == ('${TORCH_VARIANT}' == 'cuda') else f'torch {torch.__version__} is not a ${TORCH_VARIANT} build')"
COPY --from=requirements /requirements.txt /tmp/requirements.txt
# setuptools: refit's build backend, so that its wheel builds with no network
RUN --mount=type=secret,id=pipconf \
    --mount=type=cache,target=/root/.cache/pip,sharing=locked \
    set -eu; \
    if [ -s /run/secrets/pipconf ]; then export PIP_CONFIG_FILE=/run/secrets/pipconf; fi; \
    /opt/refit/bin/pip install -r /tmp/requirements.txt "setuptools>=70.1" ${WORKER_PACKAGES}; \
    rm /tmp/requirements.txt

# ---------------------------------------------------------------------------------------------
# refit itself, as a wheel (a non-editable install: the package data ships inside it). The
# sources stay in this stage.
FROM dependencies AS wheel
COPY --from=context-check /context-clean /tmp/context-clean
COPY pyproject.toml README.md /src/
COPY refit /src/refit
COPY models /src/models
COPY tasks /src/tasks
COPY flows /src/flows
COPY sql /src/sql
COPY deployments /src/deployments
RUN /opt/refit/bin/pip wheel --disable-pip-version-check --no-deps --no-build-isolation --no-index -q -w /wheels /src

# ---------------------------------------------------------------------------------------------
# The runtime: the dependencies' virtualenv, refit's wheel installed into it, a user. No compiler,
# no sources, no build context. (The wheel comes by COPY, not a mount: buildah does not hash a
# mounted stage's files, and would reuse an older install after a code change.)
FROM dependencies AS runtime
RUN groupadd --system --gid 10001 refit \
    && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/refit --shell /usr/sbin/nologin refit
COPY --from=wheel /wheels/ /tmp/wheels/
RUN /opt/refit/bin/pip install --disable-pip-version-check --no-deps --no-index --no-cache-dir -q /tmp/wheels/refit-*.whl \
    && rm -rf /tmp/wheels \
    && /opt/refit/bin/pip check --disable-pip-version-check
COPY --chmod=0755 scripts/container_healthcheck.py /usr/local/bin/refit-healthcheck

# Defaults for a container; every one can be overridden with -e / env:. HF_HUB_OFFLINE: the base
# model is the packaged one, inside the image, so nothing is fetched from a hub at run time (set
# it to 0 to fine-tune a hub model id instead). REFIT_SERVE_HOST: listen on the pod's address.
# REFIT_HOME: the folder deployments/prefect.yaml's pull step moves to before a flow run.
ENV PATH=/opt/refit/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    REFIT_SERVE_HOST=0.0.0.0 \
    REFIT_SERVE_PORT=8080 \
    REFIT_HOME=/home/refit
WORKDIR /home/refit
USER 10001:10001
EXPOSE 8080
# Probes /readyz when the container runs `refit serve`; other roles have no HTTP endpoint and
# report healthy while they run. Kubernetes ignores it: deployments/kubernetes/serve.yaml has probes.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 CMD ["refit-healthcheck"]
ENTRYPOINT ["refit"]
CMD ["--help"]

ARG VERSION=unknown
ARG GIT_REVISION=unknown
ARG SOURCE_URL=
ARG TORCH_VARIANT=cpu
LABEL org.opencontainers.image.title="refit" \
      org.opencontainers.image.description="Continuous retraining and serving of a BERT feedback-satisfaction model: every role (serve, workers, flow runs, one-off commands)." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${GIT_REVISION}" \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.github.refit.torch-variant="${TORCH_VARIANT}"
