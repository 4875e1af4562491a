#!/usr/bin/env bash
# Make the Python base image from Debian packages alone, for builds without a container registry
# (air-gapped sites, our development machines): a Debian bookworm root filesystem made with
# mmdebstrap (python3 is 3.11 there), imported as a local image with PATH set, since an
# imported tarball carries no environment and the Dockerfile prepends /opt/venv/bin to it.
#
#   scripts/make_base_image.sh TAG [--with-compiler]
#
# --with-compiler adds gcc and libc headers (Triton builds launchers at run time in the CUDA
# image). DOCKER picks the client (docker or podman); MMDEBSTRAP_MIRROR a Debian mirror,
# default deb.debian.org; SUITE the Debian release (bookworm).
set -euo pipefail

tag=${1:?usage: $0 TAG [--with-compiler]}
packages=python3,python3-venv,python-is-python3,ca-certificates
if [[ ${2:-} == --with-compiler ]]; then
    packages+=,gcc,libc6-dev
fi
docker=${DOCKER:-docker}
suite=${SUITE:-bookworm}
mirror=${MMDEBSTRAP_MIRROR:-http://deb.debian.org/debian}

command -v mmdebstrap > /dev/null || { echo "mmdebstrap not found: apt-get install mmdebstrap" >&2; exit 1; }
workdir=$(mktemp -d "${TMPDIR:-/tmp}/whisper-moe-base.XXXXXX")
trap 'rm -rf "$workdir"' EXIT

# minbase: essential packages plus apt, no documentation or recommends; the security suite
# brings the current patch level of every package.
mmdebstrap --variant=minbase --include="$packages" --aptopt='APT::Install-Recommends "false"' \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    "$suite" "$workdir/rootfs.tar" \
    "deb $mirror $suite main" "deb $mirror $suite-updates main" \
    "deb ${mirror%/debian}/debian-security $suite-security main"

"$docker" import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    "$workdir/rootfs.tar" "$tag"
echo "base image $tag: Debian $suite ($packages)"
