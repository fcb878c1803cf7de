#!/usr/bin/env bash
# Run a statically linked x86-64 Linux binary on an emulated AVX-512 CPU, so the AVX-512
# (F/BW/VL/DQ/CD/VNNI, and BF16 with the default model) kernels can be tested on hosts
# without those instructions.
#
#   scripts/run-on-avx512-emulator.sh BINARY [ARGS...]
#
# The binary must be static (Rust: RUSTFLAGS='-C target-feature=+crt-static' and an explicit
# --target x86_64-unknown-linux-gnu). Its stdout/stderr (merged) are streamed to stdout and the
# script exits with its exit code (128+N if it died of signal N, 124 on timeout, 125 when the
# emulator failed before reporting an exit code).
#
# How: Bochs 3.0 (the only emulator we found that runs AVX-512, QEMU TCG cannot) boots Debian's
# cloud kernel from a generated El Torito ISO (Bochs has no -kernel option, so ISOLINUX loads the
# kernel and initramfs). A tiny static /init runs the binary and prints its exit status on the
# serial console, which Bochs writes to a file we follow.
#
# Everything is fetched from Debian with apt through a private apt root under the cache dir
# (no system packages are installed, root is not needed). Bochs is built once from Debian
# trixie's source: the packaged Bochs 2.7 (bookworm) is debugger/SMP-enabled, links GTK, has no
# headless display and its tigerlake model reports a broken XSAVE layout that makes kernels
# disable XSAVE; trixie's packaged 3.0 binary needs trixie's libc. Host requirements: bash,
# apt-get, dpkg-deb, gcc with static libc (libc6-dev), g++ and make (first run only), and
# xorriso or genisoimage/mkisofs (downloaded into the cache when missing).
#
# Environment:
#   RETORT_EMU_CACHE     cache dir (default ~/.cache/retort-emu); delete it to refetch/rebuild
#   RETORT_EMU_TIMEOUT   seconds for boot + run before the emulator is killed (default 1200)
#   RETORT_EMU_MEM_MB    guest RAM in MiB (default 1024); the binary and RETORT_EMU_FILES live
#                        in RAM (initramfs) on top of what the program itself allocates
#   RETORT_EMU_CPU       Bochs CPU model (default sapphire_rapids: AVX-512 F/CD/BW/DQ/VL/IFMA/
#                        VBMI/VBMI2/VNNI/BITALG/VPOPCNTDQ/BF16/FP16 and AVX-VNNI; AMX is
#                        switched off, see the kernel options below; or tigerlake (no BF16/FP16),
#                        corei7_icelake_u, corei7_skylake_x)
#   RETORT_EMU_IPS       emulated instructions per emulated second (default 100000000); only
#                        maps instruction counts to guest time, it does not change the speed
#   RETORT_EMU_PASSENV   names of env vars passed into the guest (default: RUST_BACKTRACE
#                        RUST_LOG RUST_TEST_THREADS RUST_MIN_STACK RUST_TEST_NOCAPTURE); the
#                        guest env is otherwise just PATH/HOME/TMPDIR
#   RETORT_EMU_FILES     space-separated host files/dirs copied into the guest at the same
#                        absolute path (e.g. a models dir the tests read)
#   RETORT_EMU_KERNEL_ARGS  extra guest kernel command line options
#   RETORT_EMU_CWD       guest working directory (default /; created if missing), e.g. the
#                        crate dir when tests open paths relative to it
#   RETORT_EMU_VERBOSE=1 also print the guest kernel log and Bochs' log path (stderr)
#   RETORT_EMU_KEEP=1    keep the per-run work dir (ISO, serial log, bochsrc)
#   RETORT_EMU_DEBIAN_MIRROR  Debian mirror (default: the first non-security archive in this
#                        machine's apt sources)
set -euo pipefail

die() { echo "retort-emu: $*" >&2; exit 125; }
log() { echo "retort-emu: $*" >&2; }

[[ $# -ge 1 ]] || { sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//' >&2; exit 2; }
binary=$1; shift
[[ -f $binary && -x $binary ]] || die "not an executable file: $binary"
if file_out=$(file -b "$binary" 2>/dev/null) && [[ $file_out == *dynamically\ linked* ]]; then
  die "$binary is dynamically linked; build it static (RUSTFLAGS='-C target-feature=+crt-static' --target x86_64-unknown-linux-gnu)"
fi

cache=${RETORT_EMU_CACHE:-$HOME/.cache/retort-emu}
timeout_s=${RETORT_EMU_TIMEOUT:-1200}
mem_mb=${RETORT_EMU_MEM_MB:-1024}
cpu_model=${RETORT_EMU_CPU:-sapphire_rapids}
ips=${RETORT_EMU_IPS:-100000000}
passenv=${RETORT_EMU_PASSENV:-RUST_BACKTRACE RUST_LOG RUST_TEST_THREADS RUST_MIN_STACK RUST_TEST_NOCAPTURE}
verbose=${RETORT_EMU_VERBOSE:-0}
# The Debian archive this machine's apt already uses (deb822 .sources or one-line .list).
host_debian_mirror() {
  { grep -h '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}'
    grep -h '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
      sed -E 's/^deb +(\[[^]]*\] +)?//' | awk '{print $1}'; } | grep -v security | head -n1 || true
}
mirror=${RETORT_EMU_DEBIAN_MIRROR:-$(host_debian_mirror)}
[[ -n $mirror ]] || die "no Debian archive in this machine's apt sources; set RETORT_EMU_DEBIAN_MIRROR"
# Guest-side artifacts (kernel, BIOS, Bochs source) come from trixie: its 6.12 kernel boots
# cleanly on Bochs, while bookworm's 6.1 stalls for minutes of emulated idle time early in boot.
guest_suite=trixie

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
whole_secs_since() { local e; e=$(elapsed "$1" "$(now)"); echo "${e%.*}"; }

# ---------------------------------------------------------------------------------------------
# Fetching. A private apt root keeps us independent of the host's sources.list and apt lists
# (and of root): only the dpkg status file is shared, so simulation sees what is installed.
# ---------------------------------------------------------------------------------------------
apt_private() { # SUITE apt-program args...
  local suite=$1 prog=$2; shift 2
  local dir=$cache/apt/$suite
  local -a opts=(-o "Dir::Etc::SourceList=$dir/sources.list" -o "Dir::Etc::SourceParts=$dir/empty"
    -o "Dir::State::Lists=$dir/lists" -o "Dir::Cache=$dir/cache" -o "Debug::NoLocking=1"
    -o "APT::Get::List-Cleanup=0")
  # apt drops to the _apt user for downloads, which cannot write into root's $HOME.
  [[ $EUID -ne 0 ]] || opts+=(-o "APT::Sandbox::User=root")
  if [[ ! -f $dir/updated ]]; then
    mkdir -p "$dir/lists/partial" "$dir/cache/archives/partial" "$dir/empty"
    local kr=/usr/share/keyrings/debian-archive-keyring.gpg
    [[ -f $kr ]] || die "missing $kr (package debian-archive-keyring)"
    printf 'deb [signed-by=%s] %s %s main\ndeb-src [signed-by=%s] %s %s main\n' \
      "$kr" "$mirror" "$suite" "$kr" "$mirror" "$suite" > "$dir/sources.list"
    log "apt-get update ($suite, private lists in $dir)"
    apt-get "${opts[@]}" -qq update >&2 || die "apt-get update for $suite failed"
    touch "$dir/updated"
  fi
  "$prog" "${opts[@]}" "$@"
}

# Extract selected members of a .deb; member globs are relative paths like './boot/vmlinuz-*'.
deb_extract() { # DEB DEST [GLOB...]
  local deb=$1 dest=$2; shift 2
  mkdir -p "$dest"
  if [[ $# -eq 0 ]]; then dpkg-deb -x "$deb" "$dest"
  else dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$dest" --wildcards "$@"; fi
}

fetch_guest_files() {
  local g=$cache/guest
  [[ -f $g/complete ]] && return
  local tmp; tmp=$(mktemp -d "$cache/fetch.XXXXXX")
  local kpkg
  kpkg=$(apt_private $guest_suite apt-cache depends linux-image-cloud-amd64 |
    awk '/Depends: linux-image-[0-9]/ { print $2; exit }')
  [[ -n $kpkg ]] || die "cannot resolve linux-image-cloud-amd64 in $guest_suite"
  log "downloading $kpkg, bochsbios, vgabios, isolinux, syslinux-common ($guest_suite)"
  (cd "$tmp" && apt_private $guest_suite apt-get download -qq "$kpkg" bochsbios vgabios isolinux syslinux-common) >&2 \
    || die "apt-get download failed"
  rm -rf "$g" && mkdir -p "$g"
  local x=$tmp/x
  deb_extract "$tmp"/linux-image-*.deb "$x" './boot/vmlinuz-*'
  deb_extract "$tmp"/bochsbios_*.deb "$x"
  deb_extract "$tmp"/vgabios_*.deb "$x"
  deb_extract "$tmp"/isolinux_*.deb "$x" './usr/lib/ISOLINUX/isolinux.bin'
  deb_extract "$tmp"/syslinux-common_*.deb "$x" './usr/lib/syslinux/modules/bios/ldlinux.c32'
  cp "$x"/boot/vmlinuz-* "$g/vmlinuz"
  cp "$x/usr/share/bochs/BIOS-bochs-latest" "$g/bios.bin"
  cp "$x/usr/share/vgabios/vgabios.bin" "$g/vgabios.bin"
  cp "$x/usr/lib/ISOLINUX/isolinux.bin" "$x/usr/lib/syslinux/modules/bios/ldlinux.c32" "$g/"
  echo "$kpkg" > "$g/kernel-version"
  rm -rf "$tmp"
  touch "$g/complete"
}

# Bochs from source: no debugger/SMP/instrumentation hooks in the CPU loop, no GUI libraries,
# and the headless "nogui" display, which the Debian binaries do not ship.
build_bochs() {
  local b=$cache/bochs
  [[ -x $b/bochs ]] && return
  command -v g++ >/dev/null && command -v make >/dev/null || die "building Bochs needs g++ and make"
  local tmp; tmp=$(mktemp -d "$cache/bochs-build.XXXXXX")
  log "fetching Bochs source ($guest_suite)"
  # Only the upstream tarball is used (no Debian patches), and apt checks it against the signed
  # Sources index, so a mirror missing the .dsc (seen on some proxies) is not fatal.
  (cd "$tmp" && apt_private $guest_suite apt-get source --download-only -qq bochs) >&2 ||
    compgen -G "$tmp/bochs_*.orig.tar.*" >/dev/null || die "apt-get source bochs failed"
  local orig; orig=$(compgen -G "$tmp/bochs_*.orig.tar.*" | head -n1)
  tar -xf "$orig" -C "$tmp"
  local src; src=$(find "$tmp" -mindepth 1 -maxdepth 1 -type d -name 'bochs*' | head -n1)
  log "building Bochs in $src (one-time, several minutes)"
  (
    cd "$src"
    # --enable-all-optimizations turns on handlers chaining/trace linking, the big speed win.
    CFLAGS="-O3 -pipe" CXXFLAGS="-O3 -pipe" ./configure --with-nogui --without-x --without-x11 \
      --without-sdl2 --without-wx --without-rfb --without-term --enable-x86-64 --enable-cpu-level=6 \
      --enable-avx --enable-evex --enable-amx --enable-vmx=2 --enable-svm --enable-protection-keys \
      --enable-cet --enable-uintr --enable-monitor-mwait --enable-pci --enable-cdrom --enable-fpu \
      --enable-a20-pin --enable-all-optimizations --disable-debugger --disable-smp --disable-plugins \
      --disable-docbook --disable-readline --disable-usb --disable-sb16 --disable-es1370 \
      --disable-ne2000 --disable-e1000 --disable-pnic --disable-clgd54xx --disable-voodoo \
      --disable-gameport --disable-busmouse --disable-iodebug --disable-gdb-stub
    make -j"$(nproc)"
  ) > "$tmp/build.log" 2>&1 || { tail -n 30 "$tmp/build.log" >&2; die "Bochs build failed (log: $tmp/build.log)"; }
  mkdir -p "$b"
  cp "$src/bochs" "$b/bochs.new" && mv "$b/bochs.new" "$b/bochs"
  basename "$orig" | sed 's/\.orig\.tar\..*//' > "$b/version"
  rm -rf "$tmp"
}

# An ISO tool on the host, else genisoimage (+ any libraries it lacks) from the host's own suite.
iso_tool() {
  local t
  for t in xorriso genisoimage mkisofs; do
    if command -v $t >/dev/null; then
      [[ $t == xorriso ]] && echo "xorriso -as mkisofs" || echo "$t"; return
    fi
  done
  local h=$cache/host-tools
  if [[ ! -f $h/complete ]]; then
    local suite; suite=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
    [[ -n $suite ]] || die "no xorriso/genisoimage and cannot tell the host's Debian suite"
    local tmp; tmp=$(mktemp -d "$cache/fetch.XXXXXX")
    local pkgs
    pkgs=$(apt_private "$suite" apt-get -s -qq install --no-install-recommends genisoimage 2>/dev/null |
      awk '/^Inst / { print $2 }')
    log "downloading $(echo $pkgs) ($suite)"
    (cd "$tmp" && apt_private "$suite" apt-get download -qq $pkgs) >&2 || die "apt-get download genisoimage failed"
    rm -rf "$h" && mkdir -p "$h"
    for d in "$tmp"/*.deb; do deb_extract "$d" "$h"; done
    rm -rf "$tmp"; touch "$h/complete"
  fi
  echo "env LD_LIBRARY_PATH=$h/usr/lib/x86_64-linux-gnu:$h/lib/x86_64-linux-gnu $h/usr/bin/genisoimage"
}

# The guest's /init: mounts the pseudo filesystems std may read, runs the binary, reports its
# status on the console and powers off (Bochs exits on ACPI soft-off).
build_init() {
  local src=$cache/init.c
  cat > "$src.new" <<'EOF'
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

/* NUL-separated strings in a file -> NULL-terminated vector, optionally with a fixed first entry. */
static char **read_vec(const char *path, char *first) {
    char *buf = NULL; size_t n = 0, cap = 0; ssize_t r;
    int fd = open(path, O_RDONLY);
    if (fd >= 0) {
        for (;;) {
            if (cap - n < 4096) buf = realloc(buf, cap = cap * 2 + 65536);
            if ((r = read(fd, buf + n, cap - n - 1)) <= 0) break;
            n += r;
        }
        close(fd);
    }
    size_t cnt = 0;
    for (size_t i = 0; i < n; i++) cnt += buf[i] == 0;
    char **v = calloc(cnt + 2, sizeof *v), **p = v;
    if (first) *p++ = first;
    for (size_t i = 0; i < n; i += strlen(buf + i) + 1) *p++ = buf + i;
    return v;
}

static char *read_line(const char *path) {
    static char buf[256];
    int fd = open(path, O_RDONLY);
    ssize_t r = fd >= 0 ? read(fd, buf, sizeof buf - 1) : 0;
    if (fd >= 0) close(fd);
    buf[r > 0 ? r : 0] = 0;
    buf[strcspn(buf, "\n")] = 0;
    return buf;
}

int main(void) {
    mkdir("/dev", 0755); mkdir("/proc", 0755); mkdir("/sys", 0755); mkdir("/tmp", 01777);
    mount("devtmpfs", "/dev", "devtmpfs", 0, NULL);
    mount("proc", "/proc", "proc", 0, NULL);
    mount("sysfs", "/sys", "sysfs", 0, NULL);
    /* /tmp stays on the (RAM-backed, writable) initramfs so RETORT_EMU_FILES under /tmp stay visible. */
    mkdir("/dev/shm", 01777);
    mount("tmpfs", "/dev/shm", "tmpfs", 0, NULL);

    /* Without /dev/console in the initramfs the kernel starts us with no stdio at all. */
    int fd = open("/dev/console", O_RDWR | O_NOCTTY);
    if (fd >= 0) {
        dup2(fd, 0); dup2(fd, 1); dup2(fd, 2);
        if (fd > 2) close(fd);
    }
    /* Raw output: the host should see exactly the program's bytes (no \n -> \r\n). */
    struct termios t;
    if (tcgetattr(1, &t) == 0) {
        t.c_oflag &= ~OPOST;
        t.c_lflag &= ~(ECHO | ICANON | ISIG);
        tcsetattr(1, TCSANOW, &t);
    }

    char **argv = read_vec("/retort-emu/args", "/retort-emu/bin");
    char **envp = read_vec("/retort-emu/env", NULL);
    char *nonce = strdup(read_line("/retort-emu/nonce"));
    char *cwd = read_line("/retort-emu/cwd");
    if (chdir(cwd) != 0) chdir("/");

    /* Markers carry a per-run nonce so program output cannot fake them. */
    dprintf(1, "\nRETORT_EMU_START %s\n", nonce);
    pid_t pid = fork();
    if (pid == 0) {
        execve(argv[0], argv, envp);
        dprintf(2, "retort-emu init: execve %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    int status = 0, code = 125;
    if (pid < 0) {
        dprintf(2, "retort-emu init: fork: %s\n", strerror(errno));
    } else {
        /* As PID 1 we also adopt orphans; only the direct child's status matters. */
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
        if (WIFEXITED(status)) {
            code = WEXITSTATUS(status);
        } else if (WIFSIGNALED(status)) {
            code = 128 + WTERMSIG(status);
            dprintf(1, "\nretort-emu init: program killed by signal %d (%s)\n",
                    WTERMSIG(status), strsignal(WTERMSIG(status)));
        }
    }
    dprintf(1, "\nRETORT_EMU_EXIT=%d %s\n", code, nonce);
    tcdrain(1);
    sync();
    reboot(RB_POWER_OFF);
    for (;;) pause(); /* if power-off fails, the host kills Bochs after seeing the marker */
}
EOF
  local hash; hash=$(sha256sum "$src.new" | cut -c1-16)
  if [[ ! -x $cache/init-$hash ]]; then
    gcc -O2 -static -Wall -Wno-unused-result -o "$cache/init-$hash.tmp" -x c "$src.new" ||
      die "gcc -static failed (needs libc6-dev)"
    mv "$cache/init-$hash.tmp" "$cache/init-$hash"
  fi
  mv "$src.new" "$src"
  echo "$cache/init-$hash"
}

# newc cpio writer in bash (the header is ASCII), so cpio(1) is not needed; everything is
# owned by root and device nodes are not needed because /init mounts devtmpfs.
cpio_newc() { # DIR > archive
  local dir=$1 ino=1 path mode size mtime nlen
  entry() { # NAME MODE_HEX SIZE MTIME [DATA_FILE | -link TARGET]
    local name=$1 m=$2 s=$3 t=$4
    nlen=$(( ${#name} + 1 ))
    printf '070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X' \
      $((ino++)) $((16#$m)) 0 0 1 "$t" "$s" 0 0 0 0 "$nlen" 0
    printf '%s\0' "$name"
    head -c $(( (4 - (110 + nlen) % 4) % 4 )) /dev/zero
    if [[ ${5:-} == -link ]]; then printf '%s' "$6"; elif [[ -n ${5:-} ]]; then cat "$5"; fi
    head -c $(( (4 - s % 4) % 4 )) /dev/zero
  }
  while IFS= read -r -d '' path; do
    read -r mode size mtime < <(stat -c '%f %s %Y' "$dir/$path")
    case $((16#$mode & 0xF000)) in
      $((0x4000))) entry "$path" "$mode" 0 "$mtime" ;;
      $((0x8000))) entry "$path" "$mode" "$size" "$mtime" "$dir/$path" ;;
      $((0xA000))) local target; target=$(readlink "$dir/$path")
                   entry "$path" "$mode" "${#target}" "$mtime" -link "$target" ;;
    esac
  done < <(cd "$dir" && find . -mindepth 1 -printf '%P\0' | sort -z)
  entry TRAILER!!! 0 0 0
}

# ---------------------------------------------------------------------------------------------
mkdir -p "$cache"
t_prep=$(now)
fetch_guest_files
build_bochs
init_bin=$(build_init)
iso=$(iso_tool)

work=$(mktemp -d "${TMPDIR:-/tmp}/retort-emu.XXXXXX")
bochs_pid= tail_pid=
cleanup() {
  local p
  for p in $bochs_pid $tail_pid; do
    if kill -0 "$p" 2>/dev/null; then kill "$p" 2>/dev/null || true; fi
  done
  sleep 0.2
  for p in $bochs_pid $tail_pid; do
    if kill -0 "$p" 2>/dev/null; then kill -9 "$p" 2>/dev/null || true; fi
  done
  if [[ ${RETORT_EMU_KEEP:-0} == 1 ]]; then log "work dir kept: $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Guest root: the binary, its argv/env (NUL-separated), and any extra files.
root=$work/root
guest_cwd=${RETORT_EMU_CWD:-/}
mkdir -p "$root/retort-emu" "$root$guest_cwd" "$root/dev" "$root/proc" "$root/sys" "$root/tmp"
echo "$guest_cwd" > "$root/retort-emu/cwd"
cp "$init_bin" "$root/init"
cp "$binary" "$root/retort-emu/bin"
nonce=$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')
echo "$nonce" > "$root/retort-emu/nonce"
: > "$root/retort-emu/args"
for a in "$@"; do printf '%s\0' "$a" >> "$root/retort-emu/args"; done
printf '%s\0' PATH=/bin:/usr/bin HOME=/ TMPDIR=/tmp > "$root/retort-emu/env"
for v in $passenv; do
  if [[ -n ${!v+x} ]]; then printf '%s=%s\0' "$v" "${!v}" >> "$root/retort-emu/env"; fi
done
for f in ${RETORT_EMU_FILES:-}; do
  f=$(realpath "$f")
  if [[ -d $f ]]; then mkdir -p "$root$f" && cp -a "$f/." "$root$f/"
  else mkdir -p "$root$(dirname "$f")" && cp -a "$f" "$root$f"; fi
done

iso_dir=$work/iso
mkdir -p "$iso_dir"
cp "$cache/guest/vmlinuz" "$cache/guest/isolinux.bin" "$cache/guest/ldlinux.c32" "$iso_dir/"
cpio_newc "$root" > "$iso_dir/initrd"
# Kernel options: quiet matters most (every console byte costs ~87us of emulated 115200-baud
# serial time, and emulated time is instructions); the rest skip work that is pointless for a
# one-shot guest (clocksource watchdog, crypto self-tests, PS/2 probing, extra UARTs).
kcmd="console=ttyS0,115200 panic=-1 mitigations=off tsc=reliable no_timer_check nowatchdog"
kcmd+=" cryptomgr.notests random.trust_cpu=on i8042.noaux i8042.nokbd 8250.nr_uarts=1"
# Work around Bochs 3.0 bugs (harmless on models without the features): its AMX XSAVE layout
# makes the kernel write an invalid XCR0 (#GP -> panic), and its SMM resume rejects CR4.LA57, so
# no AMX and 4-level paging.
kcmd+=" clearcpuid=amx_tile no5lvl"
if [[ $verbose == 1 ]]; then kcmd+=" loglevel=7"; else kcmd+=" quiet loglevel=1"; fi
kcmd+=" ${RETORT_EMU_KERNEL_ARGS:-}"
printf 'DEFAULT linux\nPROMPT 0\nTIMEOUT 0\nLABEL linux\n  KERNEL /vmlinuz\n  INITRD /initrd\n  APPEND %s\n' \
  "$kcmd" > "$iso_dir/isolinux.cfg"
$iso -quiet -o "$work/boot.iso" -b isolinux.bin -c boot.cat -no-emul-boot -boot-load-size 4 \
  -boot-info-table -R -l "$iso_dir" >&2 || die "ISO creation failed"
rm -f "$iso_dir/initrd"

cat > "$work/bochsrc" <<EOF
display_library: nogui
memory: guest=$mem_mb, host=$mem_mb
romimage: file=$cache/guest/bios.bin
vgaromimage: file=$cache/guest/vgabios.bin
cpu: model=$cpu_model, count=1, ips=$ips, reset_on_triple_fault=0
pci: enabled=1, chipset=i440fx
ata0: enabled=1, ioaddr1=0x1f0, ioaddr2=0x3f0, irq=14
ata0-master: type=cdrom, path=$work/boot.iso, status=inserted
boot: cdrom
clock: sync=none, time0=local
com1: enabled=1, mode=file, dev=$work/serial.out
log: $work/bochs.log
panic: action=fatal
error: action=report
info: action=ignore
debug: action=ignore
EOF

serial=$work/serial.out
: > "$serial"
t_start=$(now)
log "prepared in $(elapsed "$t_prep" "$t_start")s; booting ($cpu_model, ${mem_mb} MiB, bochs $(cat "$cache/bochs/version"), kernel $(cat "$cache/guest/kernel-version"))"
"$cache/bochs/bochs" -q -f "$work/bochsrc" < /dev/null > "$work/bochs.stdout" 2>&1 &
bochs_pid=$!

# Stream the program's part of the console: the kernel log before the start marker goes to
# stderr only when verbose; the blank line init prints before the exit marker is dropped.
# The marker timestamps are taken here, as the lines arrive, for the boot/run timing.
# mawk reads pipes in large blocks unless interactive, which would delay output and timestamps.
awk_cmd=(awk); if awk -W version 2>/dev/null | grep -q mawk; then awk_cmd=(awk -W interactive); fi
tail -n +1 -s 0.2 -F --pid="$bochs_pid" "$serial" 2>/dev/null | "${awk_cmd[@]}" -v nonce="$nonce" -v verbose="$verbose" -v w="$work" '
  $0 == "RETORT_EMU_START " nonce { started = 1; system("date +%s.%N > " w "/t_boot"); next }
  !started { if (verbose) print > "/dev/stderr"; next }
  $0 ~ "^RETORT_EMU_EXIT=[0-9]+ " nonce "$" { system("date +%s.%N > " w "/t_exit"); exit }
  { if (blank) print ""; blank = 0 }
  $0 == "" { blank = 1; next }
  { print; fflush() }' &
tail_pid=$!

status=
while kill -0 "$bochs_pid" 2>/dev/null; do
  # Bochs exits on the guest's ACPI power-off; the grace period covers a guest that cannot.
  if [[ -s $work/t_exit ]] && (( $(whole_secs_since "$(cat "$work/t_exit")") >= 5 )); then
    kill "$bochs_pid" 2>/dev/null || true
  fi
  if (( $(whole_secs_since "$t_start") >= timeout_s )); then
    log "timeout after ${timeout_s}s (RETORT_EMU_TIMEOUT); killing Bochs"
    status=124
    kill "$bochs_pid" 2>/dev/null || true
    break
  fi
  sleep 0.2
done
wait "$bochs_pid" 2>/dev/null || true
bochs_pid=
t_end=$(now)
wait "$tail_pid" 2>/dev/null || true
tail_pid=

t_boot=$(cat "$work/t_boot" 2>/dev/null || true)
t_exit=$(cat "$work/t_exit" 2>/dev/null || true)
code=$(sed -n "s/^RETORT_EMU_EXIT=\([0-9][0-9]*\) $nonce\$/\1/p" "$serial" | tail -n1)
if [[ -z $status ]]; then
  if [[ -n $code ]]; then status=$code; else
    status=125
    log "the guest did not report an exit code; last console lines:"
    tail -n 20 "$serial" | sed 's/^/  | /' >&2
    grep -E '>>PANIC<<|FATAL' "$work/bochs.log" | head -n 5 | sed 's/^/  bochs: /' >&2 || true
  fi
fi
[[ $verbose == 1 ]] && log "bochs log: $work/bochs.log (RETORT_EMU_KEEP=1 keeps it)"
if [[ -n $t_boot ]]; then
  log "boot $(elapsed "$t_start" "$t_boot")s, run $(elapsed "$t_boot" "${t_exit:-$t_end}")s, total $(elapsed "$t_start" "$t_end")s; exit code $status"
else
  log "no program start after $(elapsed "$t_start" "$t_end")s; exit code $status"
fi
exit "$status"
