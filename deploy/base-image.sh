#!/usr/bin/env bash
# Make sure the Dockerfile's base image, debian:bookworm-slim, exists locally.
# Where the public registry answers, `docker pull` gets it. Where it does not (this
# workplace), build an equivalent from Debian's packages: `debootstrap --variant=minbase`
# into a temporary folder from the apt mirror this machine already uses, then
# `docker import` it under the same name (~30 s). Needs root and debootstrap for that path.
set -euo pipefail

IMAGE=${BASE_IMAGE:-debian:bookworm-slim}
say() { echo "base-image: $*" >&2; }

if docker image inspect "$IMAGE" >/dev/null 2>&1; then
    exit 0
fi
if timeout 60 docker pull -q "$IMAGE" >/dev/null 2>&1; then
    say "pulled $IMAGE"
    exit 0
fi

# The Debian mirror this machine's apt uses (deb822 .sources or a one-line sources.list).
mirror=$(grep -rhoE '^URIs:[[:space:]]*[^[:space:]]+' /etc/apt/sources.list.d/*.sources 2>/dev/null \
         | awk '{print $2}' | grep -v -- '-security' | head -n1 || true)
if [ -z "$mirror" ]; then
    mirror=$(grep -rhoE '^deb[[:space:]]+[^[:space:]]+' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
             | awk '{print $2}' | grep -v -- '-security' | head -n1 || true)
fi
if [ -z "$mirror" ]; then
    say "cannot pull $IMAGE and found no apt mirror to debootstrap it from"
    exit 1
fi

root=$(mktemp -d /tmp/lossd-rootfs.XXXXXX)
trap 'rm -rf "$root"' EXIT
say "registry unreachable: debootstrap bookworm (minbase) from the apt mirror, then docker import as $IMAGE"
debootstrap --variant=minbase bookworm "$root" "$mirror" >/tmp/lossd-debootstrap.log 2>&1 \
    || { tail -n 20 /tmp/lossd-debootstrap.log >&2; exit 1; }
# as the official slim image does: no docs, man pages or translations, now or from later
# apt-get installs in the image, and no apt lists or caches
cat > "$root"/etc/dpkg/dpkg.cfg.d/slim <<'CFG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/share/lintian/*
CFG
find "$root"/usr/share/doc -mindepth 1 -not -name copyright -not -type d -delete
rm -rf "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/lintian/* \
       "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb
find "$root"/usr/share/locale -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} +
tar -C "$root" -c . | docker import -c 'CMD ["bash"]' - "$IMAGE" >/dev/null
say "imported $IMAGE ($(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}'))"
