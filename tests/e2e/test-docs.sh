#!/usr/bin/env bash
# The man page nbdkit-qed-plugin(1) against the plugin it documents:
#   test-docs.sh PLUGIN.so nbdkit-qed-plugin.pod nbdkit-qed-plugin.1
# Fails when
#   - a key of `qed_keys=` (--dump-plugin, the table .config uses) has no
#     `=item B<key=...>` entry in PARAMETERS, no `key=` in SYNOPSIS, or no line
#     starting with `key=` in --help;
#   - PARAMETERS documents a key that .config refuses: each entry's example
#     (`Example: C<key=VALUE>`) is passed to `nbdkit PLUGIN key=VALUE
#     --dump-plugin`, which runs .config for every key (and not config_complete);
#     a bogus key is shown to be refused the same way, so the probe means
#     something;
#   - an entry has no example or no `Default:`;
#   - a required section is missing or out of order, EXAMPLES lacks one of the
#     required examples, or DUMP-PLUGIN OUTPUT lacks a qed_* field that
#     --dump-plugin prints;
#   - podchecker reports an error or a warning, or the built page is not the
#     project's version or makes man(1)/groff warn.
if [[ $# -ne 3 || ! -f $2 || ! -f $3 ]]; then
  echo "usage: $0 PLUGIN.so PAGE.pod PAGE.1" >&2
  exit 1
fi
# Absolute, before functions.sh moves to its temporary directory.
pod=$(realpath -- "$2")
man_page=$(realpath -- "$3")
source "$(dirname "$0")/functions.sh" "$@"

problems=()
problem() { problems+=("$*"); echo "PROBLEM: $*" >&2; }

# section NAME: the lines of =head1 NAME, up to the next =head1.
section() {
  awk -v want="$1" '/^=head1 / { on = (substr($0, 8) == want); next } on' "$pod"
}

echo "== podchecker"
rc=0
podchecker -warnings "$pod" >podchecker.out 2>&1 || rc=$?
cat podchecker.out
[[ $rc -eq 0 ]] || problem "podchecker exit status $rc"
if grep -Eq '\*\*\* (ERROR|WARNING)' podchecker.out; then
  problem "podchecker reports errors or warnings"
fi

echo "== required sections, in order"
required=(NAME SYNOPSIS DESCRIPTION PARAMETERS EXAMPLES "CRASH SAFETY" "CHECK AND REPAIR"
          LOCKING LIMITS "DUMP-PLUGIN OUTPUT" FILES VERSION "SEE ALSO")
mapfile -t heads < <(sed -n 's/^=head1 //p' "$pod")
printf '  %s\n' "${heads[@]}"
i=0
for h in "${heads[@]}"; do
  [[ $i -lt ${#required[@]} && $h == "${required[$i]}" ]] && i=$((i + 1))
done
if [[ $i -lt ${#required[@]} ]]; then
  problem "section '${required[$i]}' is missing or out of order (required, in order: ${required[*]})"
fi

echo "== the plugin's keys"
qed_nbdkit "$plugin" --dump-plugin >dump.out || fail "nbdkit PLUGIN --dump-plugin failed"
keys_line=$(grep '^qed_keys=' dump.out) || fail "--dump-plugin prints no qed_keys= line"
IFS=, read -r -a keys <<<"${keys_line#qed_keys=}"
[[ ${#keys[@]} -gt 0 ]] || fail "qed_keys= is empty"
echo "qed_keys: ${keys[*]}"
qed_nbdkit "$plugin" --help >help.out || fail "nbdkit PLUGIN --help failed"

# PARAMETERS entries at the top level of the list: KEY<TAB>EXAMPLE-VALUE<TAB>HAS-DEFAULT.
section PARAMETERS | perl -e '
  my ($depth, $key, $body) = (0, undef, "");
  sub done {
    return unless defined $key;
    my ($ex) = $body =~ /Example:\s+C<\Q$key\E=([^>]+)>/;
    printf "%s\t%s\t%d\n", $key, $ex // "", $body =~ /Default:/ ? 1 : 0;
    undef $key;
  }
  while (<>) {
    if (/^=over/) { $depth++; next }
    if (/^=back/) { done() if --$depth == 0; next }
    if ($depth == 1 && /^=item\s+(.*)/) {
      done();
      $body = "";
      my $t = $1;
      if ($t =~ /^\[?B<([a-z0-9-]+)=/) { $key = $1 } else { print "?\t$t\t0\n" }
      next;
    }
    $body .= $_ if defined $key;
  }
  done();' >entries.tsv
echo "PARAMETERS entries:"
cat entries.tsv
synopsis=$(section SYNOPSIS)

declare -A documented=() in_keys=()
while IFS=$'\t' read -r key example has_default; do
  if [[ $key == "?" ]]; then
    problem "PARAMETERS: an =item that does not start with B<key=>: $example"
    continue
  fi
  documented[$key]=1
  [[ -n $example ]] || problem "PARAMETERS: $key= has no 'Example: C<$key=...>'"
  [[ $has_default == 1 ]] || problem "PARAMETERS: $key= does not say 'Default:'"
done <entries.tsv

for key in "${keys[@]}"; do
  in_keys[$key]=1
  [[ -n ${documented[$key]:-} ]] || problem "key $key= (qed_keys) has no =item B<$key=...> in PARAMETERS"
  grep -q -- "^$key=" help.out || problem "key $key= (qed_keys) has no line starting with '$key=' in --help"
  grep -q -- "$key=" <<<"$synopsis" || problem "key $key= (qed_keys) is not in SYNOPSIS"
done

echo "== .config refuses an unknown key (so the probe below means something)"
rc=0
qed_nbdkit "$plugin" no-such-key-for-test-docs=1 --dump-plugin >/dev/null || rc=$?
[[ $rc -ne 0 ]] || fail "an unknown key was accepted by nbdkit PLUGIN KEY=VALUE --dump-plugin"
grep -q "unknown parameter" "$nbdkit_err" || fail "an unknown key was refused without 'unknown parameter'"

echo "== .config accepts every documented key with its example"
while IFS=$'\t' read -r key example _; do
  [[ $key == "?" || -z $example ]] && continue
  [[ -n ${in_keys[$key]:-} ]] || problem "PARAMETERS documents $key=, which is not in qed_keys"
  rc=0
  qed_nbdkit "$plugin" "$key=$example" --dump-plugin >/dev/null || rc=$?
  if grep -q "unknown parameter" "$nbdkit_err"; then
    problem "PARAMETERS documents $key=, which .config refuses as an unknown parameter"
  elif [[ $rc -ne 0 ]]; then
    problem "the example $key=$example of PARAMETERS is refused by .config (exit status $rc)"
  fi
done <entries.tsv

echo "== EXAMPLES"
examples=$(section EXAMPLES)
for want in 'nbdkit -r' 'create=true' 'backing=' 'qemu-system-x86_64' '-drive file=nbd' \
            'nbdcopy' 'size=' 'check=report'; do
  grep -qF -- "$want" <<<"$examples" || problem "EXAMPLES has no example with '$want'"
done

echo "== DUMP-PLUGIN OUTPUT"
dump_section=$(section "DUMP-PLUGIN OUTPUT")
while IFS= read -r field; do
  grep -q "^=item C<$field=" <<<"$dump_section" ||
    problem "--dump-plugin prints $field=, which DUMP-PLUGIN OUTPUT does not describe"
done < <(sed -n 's/^\(qed_[a-z0-9_]*\)=.*/\1/p' dump.out)

echo "== the built page"
grep -m1 '^\.TH' "$man_page" || true
[[ $(man_th_field 1 "$man_page") == nbdkit-qed-plugin && $(man_th_field 2 "$man_page") == 1 ]] ||
  problem "$man_page: no .TH nbdkit-qed-plugin 1 line"
if [[ -n ${QED_VERSION:-} ]]; then
  release=$(man_th_field 4 "$man_page")
  [[ $release == "$QED_VERSION" ]] ||
    problem "$man_page: the .TH line's release is '$release', not version $QED_VERSION"
fi
if command -v man >/dev/null; then
  # What lintian runs to find groff warnings.
  LC_ALL=C.UTF-8 MANROFFSEQ='' MANWIDTH=80 \
    man --warnings -E UTF-8 -l -Tutf8 -Z "$man_page" >/dev/null 2>man.err || true
  if [[ -s man.err ]]; then
    cat man.err >&2
    problem "man/groff warns about $man_page"
  fi
else
  echo "(man not installed: groff warnings not checked)"
fi

if [[ ${#problems[@]} -gt 0 ]]; then
  printf '%s\n' "${problems[@]}" >&2
  fail "${#problems[@]} problem(s) with the man page"
fi
echo "test-docs: PASS (${#keys[@]} keys documented, accepted and in --help)"
