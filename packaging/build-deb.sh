#!/usr/bin/env bash
# Builds the Debian package: target/debian/vmscope_VERSION_ARCH.deb.
#
#   packaging/build-deb.sh                    # cargo build --release, then package
#   packaging/build-deb.sh --binary PATH --compress none   # package an existing binary (the CI test: its debug build)
#
# dpkg-deb, not cargo-deb: dpkg-deb is in every Debian (nothing to compile
# or install, no network), the maintainer scripts and the unit are plain
# files under packaging/ that a reviewer reads as shipped, and the man
# pages come from the binary being packaged (`vmscope man`), so the package
# cannot describe another build.
#
# Contents: /usr/bin/vmscope; /etc/vmscope/vmscope.toml (conffile: the
# example configuration, commented out, with store.path set);
# /etc/default/vmscope (conffile: ARGS); /lib/systemd/system/vmscope.service;
# man pages in /usr/share/man/man1; /usr/share/vmscope/{dashboards,rules};
# /usr/share/doc/vmscope. postinst adds the vmscope system user and
# /var/lib/vmscope, /var/log/vmscope; postrm purge removes them.
set -euo pipefail
cd "$(dirname "$0")/.."

binary=
out=target/debian
# xz for a release; the CI test packages a 200 MB debug binary with none
# (xz would spend minutes on it).
compress=xz
while (($# > 0)); do
    case $1 in
        --binary) binary=${2:?--binary needs a path}; shift 2 ;;
        --out) out=${2:?--out needs a directory}; shift 2 ;;
        --compress) compress=${2:?--compress needs xz, gzip or none}; shift 2 ;;
        *) echo "build-deb: unknown argument $1 (--binary PATH, --out DIR, --compress xz|gzip|none)" >&2; exit 2 ;;
    esac
done
if [[ -z $binary ]]; then
    cargo build --release --locked -p vmscope
    binary=target/release/vmscope
fi
[[ -x $binary ]] || { echo "build-deb: $binary is not an executable" >&2; exit 1; }

# "vmscope 0.1.0" -> 0.1.0: the version the binary reports, as packaged.
version=$("$binary" --version | awk '{print $2}')
arch=$(dpkg --print-architecture)
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
chmod 0755 "$root"

install -D -m 0755 "$binary" "$root/usr/bin/vmscope"
install -d -m 0755 "$root/etc/vmscope" "$root/usr/share/man/man1" \
    "$root/usr/share/vmscope/dashboards" "$root/usr/share/vmscope/rules" \
    "$root/usr/share/doc/vmscope" "$root/DEBIAN"
{
    cat <<'HEAD'
# /etc/vmscope/vmscope.toml: vmscope's configuration (vmscope.service reads it
# through ARGS in /etc/default/vmscope). Every setting below is commented out
# and shows its default; uncomment a line (and its [section] header) to change
# it. Check a change with: vmscope check-config /etc/vmscope/vmscope.toml
# then: systemctl restart vmscope (a reload re-reads only the web config).
#
HEAD
    sed -E 's/^([^#])/# \1/' vmscope.example.toml
    cat <<'TAIL'

# Set for the package: the service runs as the vmscope user, whose state
# lives in its systemd StateDirectory.
[store]
path = "/var/lib/vmscope/state.db"
TAIL
} >"$root/etc/vmscope/vmscope.toml"
chmod 0644 "$root/etc/vmscope/vmscope.toml"
install -D -m 0644 packaging/default "$root/etc/default/vmscope"
install -D -m 0644 packaging/vmscope.service "$root/lib/systemd/system/vmscope.service"
install -m 0644 packaging/share/README.dashboards "$root/usr/share/vmscope/dashboards/README"
install -m 0644 packaging/share/README.rules "$root/usr/share/vmscope/rules/README"
# The mixin (docs/dashboards.md): Grafana dashboards to import, rules for
# Prometheus' rule_files.
install -m 0644 mixin/dashboards/*.json "$root/usr/share/vmscope/dashboards/"
install -m 0644 mixin/rules/*.yml "$root/usr/share/vmscope/rules/"

man=$(mktemp -d)
"$binary" man "$man"
for page in "$man"/*.1; do
    gzip -9n -c "$page" >"$root/usr/share/man/man1/$(basename "$page").gz"
done
rm -rf "$man"

cat >"$root/usr/share/doc/vmscope/copyright" <<'COPY'
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: vmscope

Files: *
License: Apache-2.0
 On Debian systems, the full text of the Apache License 2.0 is in
 /usr/share/common-licenses/Apache-2.0.
COPY
gzip -9n -c README.md >"$root/usr/share/doc/vmscope/README.md.gz"
chmod 0644 "$root"/usr/share/doc/vmscope/*

for s in postinst prerm postrm; do
    install -m 0755 "packaging/debian/$s" "$root/DEBIAN/$s"
done
printf '/etc/vmscope/vmscope.toml\n/etc/default/vmscope\n' >"$root/DEBIAN/conffiles"
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
cat >"$root/DEBIAN/control" <<CONTROL
Package: vmscope
Version: $version
Architecture: $arch
Maintainer: vmscope developers <vmscope@example.invalid>
Installed-Size: $size
Depends: adduser, libc6, libgcc-s1
Section: admin
Priority: optional
Homepage: https://example.invalid/vmscope
Description: observability agent for virtual-machine hosts
 One agent per hypervisor host: finds every VM (QEMU/KVM, libvirt, Cloud
 Hypervisor, Firecracker), measures each from the host side (CPU, vCPU
 steal, memory, TAP traffic, storage I/O) with no guest agent, attributes
 VMs to owners, and serves Prometheus metrics and a JSON API.
CONTROL

mkdir -p "$out"
deb="$out/vmscope_${version}_${arch}.deb"
dpkg-deb --root-owner-group "-Z$compress" --build "$root" "$deb" >/dev/null
echo "$deb"
