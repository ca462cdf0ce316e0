# Sourced by scripts that provide a Debian package's binaries to tests and benchmarks without
# installing the package: `debian_fetch WORK PACKAGE...` downloads the .debs into WORK with
# `apt-get download` using a private apt state (lists and downloads stay in WORK, the system's
# apt state is not touched). The sources are the machine's own Debian ones (deb822 stanzas
# signed by Debian's archive keyring in /etc/apt/sources.list.d/*.sources), read now rather than
# naming any mirror. The caller defines `cannot MESSAGE` (say what to install, exit); `apt_opts`
# stays set for more `apt-get download`s into WORK.

debian_fetch() {
  local work="$1"
  shift
  command -v apt-get >/dev/null 2>&1 && command -v dpkg >/dev/null 2>&1 ||
    cannot "no apt-get/dpkg here to fetch Debian's $1 package"
  mkdir -p "$work/lists/partial" "$work/cache/archives/partial"
  awk '
    function flush() {
      if (types ~ /(^| )deb( |$)/ && signed ~ /\/debian-archive-keyring\.(gpg|pgp)$/ && uris != "")
        print "deb [signed-by=" signed "] " uris " " suites " main"
      types = uris = suites = signed = ""
    }
    /^[ \t]*$/ { flush(); next }
    /^Types:/ { sub(/^Types:[ \t]*/, ""); types = $0 }
    /^URIs:/ { sub(/^URIs:[ \t]*/, ""); uris = $0 }
    /^Suites:/ { sub(/^Suites:[ \t]*/, ""); suites = $0 }
    /^Signed-By:/ { sub(/^Signed-By:[ \t]*/, ""); signed = $0 }
    END { flush() }
  ' /etc/apt/sources.list.d/*.sources 2>/dev/null |
    # One-line sources take one suite each.
    awk '{ n = split($0, f, " "); for (i = 4; i < n; i++) print f[1], f[2], f[3], f[i], f[n] }' \
      >"$work/sources.list"
  [ -s "$work/sources.list" ] ||
    cannot "no Debian archive found in /etc/apt/sources.list.d/*.sources"
  apt_opts=(
    -o "Dir::Etc::SourceList=$work/sources.list" -o Dir::Etc::SourceParts=/dev/null
    -o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work/cache"
    -o Dir::State::status=/dev/null -o APT::Sandbox::User=root -o Debug::NoLocking=1
    -o Acquire::Languages=none -qq
  )
  apt-get "${apt_opts[@]}" update >/dev/null || cannot "apt-get update failed for $work/sources.list"
  (cd "$work" && apt-get "${apt_opts[@]}" download "$@" >/dev/null) ||
    cannot "apt-get download $* failed"
}
