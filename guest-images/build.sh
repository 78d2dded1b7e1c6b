#!/usr/bin/env bash
# Builds the lithe guest image from Debian packages only:
#   out/vmlinux         Linux 6.1 from linux-source-6.1, tinyconfig + kernel.config + patches/
#   out/bzImage         the same kernel as a bzImage (LZ4: its decompressor runs emulated on PVM)
#   out/initramfs.cpio  uncompressed cpio: init, cpu-event, attack and iobench, built from their .c files
#   out/rootfs.ext4     the same files as an ext4 root disk (mke2fs -d), booted with root=/dev/vda
# Rebuilds only what changed: the kernel when kernel.config, patches/ or this
# script change; the initramfs when init.c or a helper's .c changes. Prints the output folder.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
out=${LITHE_GUEST_OUT:-$here/out}
jobs=${JOBS:-$(nproc)}
mkdir -p "$out"

log() { echo "guest-images: $*" >&2; }

need_pkgs=()
[ -f /usr/src/linux-source-6.1.tar.xz ] || need_pkgs+=(linux-source-6.1)
for tool in gcc make flex bison bc cpio xz lz4 patch perl mke2fs; do
	command -v "$tool" >/dev/null || need_pkgs+=("$tool")
done
[ -f /usr/include/libelf.h ] || need_pkgs+=(libelf-dev)
if [ ${#need_pkgs[@]} -gt 0 ]; then
	# map tool names to Debian packages
	pkgs=()
	for p in "${need_pkgs[@]}"; do
		case $p in gcc|make) pkgs+=(build-essential) ;; xz) pkgs+=(xz-utils) ;; mke2fs) pkgs+=(e2fsprogs) ;; *) pkgs+=("$p") ;; esac
	done
	if [ "$(id -u)" != 0 ]; then
		log "missing Debian packages: ${pkgs[*]} (run as root, or apt-get install them)"
		exit 1
	fi
	log "installing ${pkgs[*]}"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}" >/dev/null
fi

stamp_of() { cat "$@" | sha256sum | cut -c1-16; }

# ---- kernel ----------------------------------------------------------------
kstamp=$(stamp_of "$here/kernel.config" "$here"/patches/*.patch "$here/build.sh" /usr/src/linux-source-6.1.tar.xz.sha 2>/dev/null || \
	stamp_of "$here/kernel.config" "$here"/patches/*.patch "$here/build.sh")
if [ -f "$out/vmlinux" ] && [ -f "$out/bzImage" ] && [ "$(cat "$out/vmlinux.stamp" 2>/dev/null)" = "$kstamp" ]; then
	log "kernel up to date ($out/vmlinux)"
else
	src="$out/build/linux"
	rm -rf "$out/build"
	mkdir -p "$out/build"
	log "unpacking linux-source-6.1"
	tar -C "$out/build" -xf /usr/src/linux-source-6.1.tar.xz
	mv "$out/build"/linux-source-6.1 "$src"
	for p in "$here"/patches/*.patch; do
		log "applying $(basename "$p")"
		patch -d "$src" -p1 --quiet --forward < "$p"
	done
	log "configuring (tinyconfig + kernel.config)"
	make -C "$src" -s tinyconfig >/dev/null
	"$src/scripts/kconfig/merge_config.sh" -m -O "$src" "$src/.config" "$here/kernel.config" >/dev/null
	make -C "$src" -s olddefconfig >/dev/null
	# every option we asked for must have survived dependency resolution
	missing=0
	while IFS= read -r line; do
		case $line in
		CONFIG_*=*)
			grep -qx "$line" "$src/.config" || { log "config did not take: $line"; missing=1; } ;;
		"# CONFIG_"*" is not set")
			opt=${line#\# }; opt=${opt%% *}
			if grep -q "^$opt=" "$src/.config"; then log "config still set: $opt"; missing=1; fi ;;
		esac
	done < "$here/kernel.config"
	[ $missing = 0 ] || { log "kernel.config does not apply cleanly"; exit 1; }
	log "building vmlinux and bzImage with $jobs jobs (a few minutes)"
	# Inline memset/memcpy as rep stosq/movsq, not rep stosb/movsb: under this
	# machine's KVM each iteration of a rep string instruction is emulated, so
	# eight bytes per iteration instead of one (README: "KCFLAGS").
	make -C "$src" -s -j"$jobs" KCFLAGS=-mstringop-strategy=rep_8byte vmlinux bzImage
	cp "$src/arch/x86/boot/bzImage" "$out/bzImage.tmp" && mv "$out/bzImage.tmp" "$out/bzImage"
	cp "$src/vmlinux" "$out/vmlinux.tmp" && mv "$out/vmlinux.tmp" "$out/vmlinux"
	cp "$src/System.map" "$out/System.map"
	cp "$src/.config" "$out/kernel.config.full"
	echo "$kstamp" > "$out/vmlinux.stamp"
	rm -rf "$out/build"
	log "kernel built: $out/vmlinux"
fi

# ---- initramfs ---------------------------------------------------------------
# init.c is built on the kernel's own nolibc (tools/include/nolibc in the same
# linux-source package): no busybox, no glibc (init.c says why).
srcver=$(dpkg-query -W -f='${Version}' linux-source-6.1 2>/dev/null || echo unknown)
istamp=$(echo "$srcver" | stamp_of - "$here/init.c" "$here/cpu-event.c" "$here/attack.c" "$here/iobench.c" "$here/build.sh")
if [ -f "$out/initramfs.cpio" ] && [ -f "$out/rootfs.ext4" ] && [ "$(cat "$out/initramfs.stamp" 2>/dev/null)" = "$istamp" ]; then
	log "initramfs up to date ($out/initramfs.cpio)"
else
	work=$(mktemp -d)
	trap 'rm -rf "$work"' EXIT
	root=$work/root
	mkdir -p "$root"/{bin,dev,proc,sys,tmp}
	log "unpacking nolibc from linux-source-6.1"
	tar -C "$work" -xf /usr/src/linux-source-6.1.tar.xz linux-source-6.1/tools/include/nolibc
	nolibc=$work/linux-source-6.1/tools/include/nolibc
	cflags=(-Os -s -static -nostdlib -ffreestanding -fno-builtin -fno-stack-protector
		-fno-asynchronous-unwind-tables -fno-ident -fno-pie -no-pie -Wall -Wextra -Werror)
	gcc "${cflags[@]}" -I "$nolibc" -include "$nolibc/nolibc.h" -o "$root/init" "$here/init.c" -lgcc
	# The uevent helper, the attacker of the VMM's registers (for the
	# hostile-guest test) and the I/O benchmark's guest side: C with raw
	# system calls (cpu-event.c says why).
	for prog in cpu-event attack iobench; do
		gcc "${cflags[@]}" -o "$root/bin/$prog" "$here/$prog.c"
	done
	chmod 755 "$root/init" "$root/bin/cpu-event" "$root/bin/attack" "$root/bin/iobench"
	(cd "$root" && find . -print0 | sort -z | cpio --null -o -H newc --quiet -R 0:0) > "$out/initramfs.cpio.tmp"
	mv "$out/initramfs.cpio.tmp" "$out/initramfs.cpio"
	# The same files as an ext4 root disk, as Kata boots its guest image:
	# root=/dev/vda rw init=/init (tests/tests/guest/devices.rs).
	rm -f "$out/rootfs.ext4.tmp"
	mke2fs -q -t ext4 -d "$root" -F "$out/rootfs.ext4.tmp" 16M
	mv "$out/rootfs.ext4.tmp" "$out/rootfs.ext4"
	echo "$istamp" > "$out/initramfs.stamp"
	log "initramfs and root disk built: $out/initramfs.cpio, $out/rootfs.ext4"
fi
echo "$out"
