#!/bin/bash
# The test driver inside the guest (run by vm-test-driver.service after
# multi-user.target, as root). Checks what sops-nix.service did at boot, then
# installs a manifest with a changed secret and one whose sops file the host
# cannot open, restarting sops-nix.service after each.
#
# Results go to the file given as $1 (the second serial port) in TAP form:
#   1..N / ok I - what / not ok I - what # why
# followed by the journal of sops-nix.service between VMTEST-JOURNAL-BEGIN and
# VMTEST-JOURNAL-END, and VMTEST-END. The host (run.sh) decides pass or fail.
#
# Secret values are only ever compared (cmp, digests), never printed.
set -uo pipefail # no -e: a failed check is reported and the others still run

exec 3>"${1:?usage: driver.sh RESULTS-FILE}"
plan=45
expected=/etc/sops-test/expected
secret=/run/secrets/ssh_keys/private_key
n=0

emit() { printf '%s\n' "$*" >&3; printf '%s\n' "$*"; }
ok() { n=$((n + 1)); emit "ok $n - $1"; }
not_ok() { n=$((n + 1)); emit "not ok $n - $1 # $2"; }

# check_eq WHAT EXPECTED ACTUAL (only for values that are not secrets)
check_eq() {
  if [[ $2 == "$3" ]]; then ok "$1"; else not_ok "$1" "expected '$2', got '$3'"; fi
}
# check WHAT COMMAND...: the command succeeds
check() {
  local what=$1
  shift
  if "$@" >/dev/null 2>&1; then ok "$what"; else not_ok "$what" "failed: $*"; fi
}
# check_fails WHAT COMMAND...: the command fails
check_fails() {
  local what=$1
  shift
  if "$@" >/dev/null 2>&1; then not_ok "$what" "succeeded: $*"; else ok "$what"; fi
}
# check_content WHAT EXPECTED-FILE ACTUAL-FILE, byte for byte; prints neither.
check_content() {
  if cmp -s "$2" "$3"; then ok "$1"; else not_ok "$1" "$3 differs from $2"; fi
}
# wait_until SECONDS COMMAND...: polls until the command succeeds.
wait_until() {
  local deadline=$((SECONDS + $1))
  shift
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || return 1
    sleep 0.5
  done
}

prop() { systemctl show -P "$2" "$1"; }
owner_mode() { stat -L -c '%U %G %a' "$1" 2>&1; }
digest() { sha256sum < "$1" | cut -d' ' -f1; }
# No start/restart job queued for the consumers (the driver's own job runs until it exits).
no_jobs() { [[ -z "$(systemctl list-jobs --no-legend secret-test.service db-consumer.service)" ]]; }
restarted_since() { [[ "$(prop secret-test.service InvocationID)" != "$1" ]]; }
use_manifest() { install -m 0644 "/etc/sops-test/manifests/$1" /etc/sops-test/manifest.json; }

emit "1..$plan"

# --- at boot --------------------------------------------------------------------------
check_eq "sops-nix.service succeeded at boot" "active exited success" \
  "$(prop sops-nix.service ActiveState) $(prop sops-nix.service SubState) $(prop sops-nix.service Result)"
check_eq "sops-install-secrets.service is an alias of sops-nix.service" "sops-nix.service" \
  "$(prop sops-install-secrets.service Id)"
check_eq "sops-secrets.target is reached" "active" "$(prop sops-secrets.target ActiveState)"
check_eq "/run/secrets links to generation 1" "/run/secrets.d/1" "$(readlink /run/secrets)"
check_eq "/run/secrets.d is a ramfs" "ramfs" "$(findmnt -n -o FSTYPE /run/secrets.d)"
check_eq "generation 1 is 0751 root:keys" "751 root keys" "$(stat -c '%a %U %G' /run/secrets.d/1 2>&1)"
check_eq "ssh_keys/private_key is secret-test:secret-test 0400" "secret-test secret-test 400" "$(owner_mode "$secret")"
check_content "ssh_keys/private_key holds the plaintext" "$expected/private_key.v1" "$secret"
check "secret-test can read ssh_keys/private_key" runuser -u secret-test -- cat "$secret"
check_fails "alice cannot read ssh_keys/private_key" runuser -u alice -- cat "$secret"
check_eq "db/password has uid 4005, gid 4006, mode 0440" "4005 4006 440" \
  "$(stat -L -c '%u %g %a' /run/secrets/db/password 2>&1)"
check_content "db/password holds the plaintext" "$expected/db_password" /run/secrets/db/password
check_eq "the template is rendered as alice:alice 0440" "alice alice 440" "$(owner_mode /run/secrets/rendered/app.conf)"
check_content "the template holds the rendered text" "$expected/app.conf" /run/secrets/rendered/app.conf
check_eq "secret-test.service succeeded" "active success" \
  "$(prop secret-test.service ActiveState) $(prop secret-test.service Result)"
sops_done=$(prop sops-nix.service ActiveEnterTimestampMonotonic)
test_started=$(prop secret-test.service InactiveExitTimestampMonotonic)
check "secret-test.service started after sops-nix.service finished ($test_started >= $sops_done)" \
  test "$sops_done" -gt 0 -a "$test_started" -ge "$sops_done"
check_eq "secret-test.service ran as secret-test" "secret-test" "$(stat -c %U /run/secret-test/read 2>&1)"
check_eq "secret-test.service saw secret-test secret-test 400" "secret-test secret-test 400" \
  "$(cat /run/secret-test/stat 2>&1)"
check_eq "secret-test.service read generation 1's value" "$(digest "$expected/private_key.v1")" \
  "$(cut -d' ' -f1 /run/secret-test/read 2>&1)"
check_eq "secret-test.service ran once, on generation 1" "/run/secrets.d/1" "$(cat /run/secret-test.runs 2>&1)"
check_eq "db-consumer.service is running" "active running" \
  "$(prop db-consumer.service ActiveState) $(prop db-consumer.service SubState)"

# --- a changed secret -------------------------------------------------------------------
secret_test_id=$(prop secret-test.service InvocationID)
db_consumer_id=$(prop db-consumer.service InvocationID)
use_manifest 2-changed-secret.json
check "sops-nix.service installs a manifest with a changed secret" systemctl restart sops-nix.service
check_eq "/run/secrets links to generation 2" "/run/secrets.d/2" "$(readlink /run/secrets)"
check_fails "generation 1 is pruned (keepGenerations = 1)" test -e /run/secrets.d/1
check_content "ssh_keys/private_key holds the new plaintext" "$expected/private_key.v2" "$secret"
check_eq "ssh_keys/private_key is still secret-test:secret-test 0400" "secret-test secret-test 400" "$(owner_mode "$secret")"
check_content "db/password is unchanged" "$expected/db_password" /run/secrets/db/password
wait_until 60 restarted_since "$secret_test_id"
wait_until 60 no_jobs
check "secret-test.service was restarted (new invocation id)" restarted_since "$secret_test_id"
check_eq "secret-test.service succeeded after the restart" "active success" \
  "$(prop secret-test.service ActiveState) $(prop secret-test.service Result)"
check_eq "secret-test.service read generation 2's value" "$(digest "$expected/private_key.v2")" \
  "$(cut -d' ' -f1 /run/secret-test/read 2>&1)"
check_eq "secret-test.service ran twice, the second time on generation 2" \
  "/run/secrets.d/1 /run/secrets.d/2" "$(paste -sd' ' /run/secret-test.runs 2>&1)"
check_eq "db-consumer.service (unchanged secret) was not restarted" "$db_consumer_id" \
  "$(prop db-consumer.service InvocationID)"
journal=$(journalctl -b -u sops-nix.service -o cat --no-pager)
check "the journal holds 'modifying secret: ssh_keys/private_key'" \
  grep -qx 'modifying secret: ssh_keys/private_key' <<<"$journal"
check_fails "the journal names no other modified secret" grep -q 'modifying.*db/password' <<<"$journal"

# --- a manifest whose sops file the host key cannot open ----------------------------------
secret_test_id=$(prop secret-test.service InvocationID)
use_manifest 3-wrong-key.json
check_fails "sops-nix.service fails with a file the host key cannot open" systemctl restart sops-nix.service
check_eq "sops-nix.service is failed" "failed exit-code" \
  "$(prop sops-nix.service ActiveState) $(prop sops-nix.service Result)"
check "systemctl --failed lists sops-nix.service" \
  bash -c 'systemctl --failed --no-legend --plain | grep -q "^sops-nix.service "'
check_fails "sops-secrets.target is no longer active after the failed install" \
  systemctl is-active --quiet sops-secrets.target
check_eq "/run/secrets still links to generation 2" "/run/secrets.d/2" "$(readlink /run/secrets)"
check_fails "no generation 3 is left behind" test -e /run/secrets.d/3
check_content "ssh_keys/private_key still holds generation 2's plaintext" "$expected/private_key.v2" "$secret"
check "secret-test can still read ssh_keys/private_key" runuser -u secret-test -- cat "$secret"
# Give a wrongly requested restart the chance to show.
sleep 2
wait_until 30 no_jobs
check_eq "secret-test.service was not restarted" "$secret_test_id" "$(prop secret-test.service InvocationID)"
check "the journal marks the failure (SOPS_EVENT=sops-install-secrets-failed)" \
  test -n "$(journalctl -b SOPS_EVENT=sops-install-secrets-failed -o cat --no-pager)"

# The values themselves (every line of each, but the PEM armour) appear nowhere
# in this boot's journal; an empty journal or too few patterns count as a failure.
journal_free_of_secrets() {
  local patterns journal f
  patterns=$(for f in private_key.v1 private_key.v2 db_password api_token; do
    cat "$expected/$f"
    echo
  done | grep -v -e '^-----' -e '^$')
  journal=$(journalctl -b -o cat --no-pager)
  [[ $(wc -l <<<"$patterns") -ge 4 && -n $journal ]] || return 1
  ! grep -qF -f <(printf '%s\n' "$patterns") <<<"$journal"
}
check "no secret value appears in the journal" journal_free_of_secrets

# --- report -----------------------------------------------------------------------------
[[ $n == "$plan" ]] || emit "# the plan says $plan checks, $n ran"
emit "VMTEST-JOURNAL-BEGIN"
# The results port is a tty: no colours.
SYSTEMD_COLORS=0 journalctl -b -u sops-nix.service -o short-monotonic --no-pager >&3 2>&1
emit "VMTEST-JOURNAL-END"
emit "VMTEST-END"
