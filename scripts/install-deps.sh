#!/usr/bin/env bash
# Installs everything vmscope's builds, end-to-end tests and benchmarks need on
# a Debian 12 machine, as root, without systemd. Idempotent: a second run only
# checks and returns in about a second. Non-interactive.
#
# What it sets up:
# - Debian packages: QEMU, libvirt (monolithic libvirtd), Prometheus and its
#   exporters, VictoriaMetrics, PostgreSQL 15 and Redis (started by the tests, never as services), iproute2, python3, wrk, hyperfine, curl, jq, procps,
#   systemd (for systemd-analyze only) and adduser (the package test),
#   chromium (the status page test, headless).
# - libvirt without systemd: the libvirt-qemu user/group, /var/log/libvirt and
#   /etc/libvirt/qemu.conf running domains as root (see shared/LAB.md).
# - Python's prometheus_client (the OpenMetrics parser used to validate output).
# - A Linux test guest (kernel + busybox initramfs) in /var/cache/vmscope-lab.
set -euo pipefail

if [[ $(id -u) -ne 0 ]]; then
    echo "install-deps: must run as root" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive

# Package name -> a file that the package installs, so installed packages are
# detected without asking dpkg about each one.
declare -A PKGS=(
    [qemu-system-x86]=/usr/bin/qemu-system-x86_64
    [prometheus]=/usr/bin/prometheus
    [prometheus-alertmanager]=/usr/bin/prometheus-alertmanager
    [prometheus-node-exporter]=/usr/bin/prometheus-node-exporter
    [prometheus-process-exporter]=/usr/bin/prometheus-process-exporter
    [iproute2]=/usr/sbin/ip
    [python3]=/usr/bin/python3
    [wrk]=/usr/bin/wrk
    [hyperfine]=/usr/bin/hyperfine
    [curl]=/usr/bin/curl
    [jq]=/usr/bin/jq
    [procps]=/usr/bin/ps
    [libvirt-daemon]=/usr/sbin/libvirtd
    [libvirt-daemon-driver-qemu]=/usr/lib/x86_64-linux-gnu/libvirt/connection-driver/libvirt_driver_qemu.so
    [libvirt-clients]=/usr/bin/virsh
    # owners tests: the platform's database and session store
    [postgresql]=/usr/lib/postgresql/15/bin/postgres
    [redis-server]=/usr/bin/redis-server
    # the Debian package test (tests/real/package.rs): systemd-analyze
    # verify/security on the unit (no systemd runs), and the package's
    # Depends for its maintainer scripts
    [systemd]=/usr/bin/systemd-analyze
    [adduser]=/usr/sbin/adduser
    # push tests: a second remote_write receiver besides Prometheus
    [victoria-metrics]=/usr/bin/victoria-metrics
    # the status page test (tests/real/status_page.rs): a real headless browser
    [chromium]=/usr/bin/chromium
)

apt_updated=0
apt_update_once() {
    if ((apt_updated == 0)); then
        # Third-party apt sources on some images are unreachable; Debian's own
        # suites are what we need, so a partial update is not fatal here (the
        # install fails loudly if a package really cannot be found).
        apt-get update -qq || echo "install-deps: apt-get update reported errors; continuing" >&2
        apt_updated=1
    fi
}

missing=()
for pkg in "${!PKGS[@]}"; do
    if [[ ! -e ${PKGS[$pkg]} ]]; then
        missing+=("$pkg")
    fi
done

if ((${#missing[@]} > 0)); then
    mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort)
    echo "install-deps: installing ${missing[*]}"
    apt_update_once
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
    echo "install-deps: Debian packages already installed"
fi

# libvirt without systemd (LAB.md): the qemu driver refuses to start unless
# its configured user and group exist; we run domains as root so the test lab
# needs no permission setup on ROMs and TAP devices.
if ! getent group libvirt-qemu >/dev/null; then
    echo "install-deps: creating group libvirt-qemu"
    groupadd -r libvirt-qemu
fi
if ! getent passwd libvirt-qemu >/dev/null; then
    echo "install-deps: creating user libvirt-qemu"
    useradd -r -g libvirt-qemu -d /var/lib/libvirt -s /usr/sbin/nologin libvirt-qemu
fi
mkdir -p /var/log/libvirt /etc/libvirt
qemu_conf=/etc/libvirt/qemu.conf
if ! grep -qx 'user = "root"' "$qemu_conf" 2>/dev/null || ! grep -qx 'group = "root"' "$qemu_conf" 2>/dev/null; then
    echo "install-deps: setting user/group root in $qemu_conf"
    touch "$qemu_conf"
    sed -i -E '/^[[:space:]]*(user|group)[[:space:]]*=/d' "$qemu_conf"
    printf 'user = "root"\ngroup = "root"\n' >>"$qemu_conf"
fi

# prometheus_client for whichever python3 is first on PATH (the one tests run).
if python3 -c 'import prometheus_client' 2>/dev/null; then
    echo "install-deps: python prometheus_client already installed"
elif python3 -m pip --version >/dev/null 2>&1; then
    echo "install-deps: pip installing prometheus_client for $(command -v python3)"
    pip_args=(install --quiet --disable-pip-version-check --root-user-action=ignore prometheus_client)
    # Debian's own python3 is "externally managed" (PEP 668) and refuses a
    # plain pip install as root; pyenv or venv interpreters are not.
    stdlib=$(python3 -c 'import sysconfig; print(sysconfig.get_path("stdlib"))')
    if [[ -e $stdlib/EXTERNALLY-MANAGED ]]; then
        pip_args+=(--break-system-packages)
    fi
    python3 -m pip "${pip_args[@]}"
else
    # A fresh Debian python3 has no pip: Debian packages the library itself.
    echo "install-deps: installing python3-prometheus-client (no pip for $(command -v python3))"
    apt_update_once
    apt-get install -y -qq --no-install-recommends python3-prometheus-client
fi

# A Linux guest for the balloon test (crates/vmscope/tests/real/vm_disk.rs):
# Debian's kernel and busybox-static, unpacked with dpkg-deb (never
# installed), and an initramfs whose init loads the virtio balloon driver,
# prints MemTotal to the serial console and idles. Built only when missing.
GUEST=/var/cache/vmscope-lab/linux-guest
if [[ ! -s $GUEST/vmlinuz || ! -s $GUEST/initramfs.cpio.gz ]]; then
    apt_update_once
    work=$(mktemp -d)
    # (apt warns that it downloads unsandboxed into a root-only directory: harmless)
    kernel_pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-/{print $2; exit}')
    (cd "$work" && apt-get download -qq busybox-static "$kernel_pkg")
    dpkg-deb -x "$work"/linux-image-*.deb "$work/k"
    dpkg-deb -x "$work"/busybox-static_*.deb "$work/bb"
    mkdir -p "$work/root/bin" "$work/root/lib"
    cp "$work/bb/bin/busybox" "$work/root/bin/"
    mods=$(echo "$work"/k/lib/modules/*/kernel/drivers/virtio)
    # Dependency order (modules.dep is made at install time, not shipped).
    for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_balloon; do
        if [[ -e $mods/$m.ko.xz ]]; then
            xz -dc "$mods/$m.ko.xz" >"$work/root/lib/$m.ko"
        else
            cp "$mods/$m.ko" "$work/root/lib/"
        fi
    done
    cat >"$work/root/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sys /sys
for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_balloon; do
    /bin/busybox insmod /lib/$m.ko || echo "vmscope-guest: insmod $m failed"
done
/bin/busybox grep MemTotal /proc/meminfo
echo "vmscope-guest: ready"
while true; do /bin/busybox sleep 1000; done
INIT
    chmod 755 "$work/root/init"
    (cd "$work/root" && find . | "$work/bb/bin/busybox" cpio -o -H newc 2>/dev/null | gzip -1 >"$work/initramfs.cpio.gz")
    mkdir -p "$GUEST"
    cp "$work"/k/boot/vmlinuz-* "$GUEST/vmlinuz"
    cp "$work/initramfs.cpio.gz" "$GUEST/initramfs.cpio.gz"
    rm -rf "$work"
    echo "install-deps: built the Linux test guest in $GUEST"
fi

echo "install-deps: done"
