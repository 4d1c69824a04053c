# kvm-manager: one container that runs one VM as if the VM were the pod.
#
# Built by scripts/container (podman; a local bookworm base when none can be pulled):
#   scripts/container build            -> localhost/kvm-manager:<version>
# Any builder works too:  docker build -t kvm-manager .
ARG BASE=docker.io/library/debian:bookworm-slim

# --- build: the project and its Python dependencies in a virtual environment ----------------
# python-iptables compiles a small C wrapper: the compiler stays in this stage.
FROM ${BASE} AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      python3 python3-venv python3-dev gcc libc6-dev ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml README.md /src/
COPY kvmmgr /src/kvmmgr
# A builder behind a TLS-inspecting proxy passes its CA bundle as the secret "ca-bundle"
# (scripts/container does); it is used for pip only and stays out of every layer.
RUN --mount=type=secret,id=ca-bundle \
    if [ -s /run/secrets/ca-bundle ]; then export PIP_CERT=/run/secrets/ca-bundle; fi \
 && python3 -m venv /opt/kvm-manager \
 && /opt/kvm-manager/bin/pip install --no-cache-dir --no-compile /src \
 && /opt/kvm-manager/bin/python -m compileall -q /opt/kvm-manager/lib
# The web console's page (WEB_CONSOLE_PORT): Debian's novnc package holds only static files
# in /usr/share/novnc; its dependencies (websockify, numpy, nodejs) serve its own launcher,
# which kvm-manager does not use. So the package is unpacked here, and its files alone copied.
RUN cd /tmp && apt-get update && apt-get download novnc && rm -rf /var/lib/apt/lists/* \
 && dpkg-deb -x novnc_*.deb /novnc && rm novnc_*.deb \
 && test -f /novnc/usr/share/novnc/vnc.html

# --- runtime: what kvm-manager drives, no compiler, no GUI -----------------------------------
FROM ${BASE}
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="kvm-manager" \
      org.opencontainers.image.description="Runs a legacy VM in a Kubernetes pod, as if the VM were the pod" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="debian:bookworm-slim"
# qemu-system-x86 without its recommends leaves out the GUI; seabios and ipxe-qemu (BIOS and
# the virtio-net boot ROM) come as dependencies; ovmf is the UEFI firmware (VM_FIRMWARE=uefi).
# iptables brings the legacy libxtables that python-iptables drives; nftables keeps DHCP
# inside the pod in bridge and macvtap modes.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      python3 qemu-system-x86 qemu-utils ovmf dnsmasq-base iptables nftables ca-certificates \
 && rm -rf /var/lib/apt/lists/* /usr/share/doc/* /usr/share/man/*
COPY --from=build /opt/kvm-manager /opt/kvm-manager
COPY --from=build /novnc/usr/share/novnc /usr/share/novnc
# Downloads trust Debian's CA store, so a derived image adds a CA the Debian way
# (update-ca-certificates); IMG_CA_BUNDLE still names one for a single source.
ENV PATH=/opt/kvm-manager/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
# QEMU runs as this user once the setup is done (QEMU_USER), with no capability at all;
# dnsmasq as Debian's dnsmasq user. The volumes a pod mounts: the shared image cache, the
# VM's disks, the runtime files.
RUN groupadd --system --gid 10107 kvmmgr-qemu \
 && useradd --system --uid 10107 --gid kvmmgr-qemu --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin kvmmgr-qemu \
 && mkdir -p /image /vm /run/kvmmgr
ENTRYPOINT ["kvm-manager"]
CMD ["run"]
