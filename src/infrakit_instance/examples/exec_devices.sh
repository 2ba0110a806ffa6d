#!/bin/sh
# An example for the exec provider: one script for every hook, devices simulated
# by files in $DEVICES_DIR (set it with the provider's env option).  A file's
# content is the device's health: healthy or broken; no file: the device is gone.
#
#   infrakit-instance examples DIR     # copies this script and its config into DIR
#   infrakit-instance --provider exec --provider-config DIR/exec_devices.json
#
# The hook is the script's first argument (INFRAKIT_HOOK says it too).  Each hook
# gets a JSON document on stdin and INFRAKIT_* environment variables; it fails by
# exiting non-zero with a message on stderr.  No JSON parsing is needed here:
# the environment variables carry what this script uses.
set -eu

dir=${DEVICES_DIR:?"set DEVICES_DIR in the exec provider option env"}
mkdir -p "$dir" || { echo "cannot create the devices directory $dir" >&2; exit 1; }

case "${1:-$INFRAKIT_HOOK}" in
validate)
    # stdin holds the Properties InfraKit will provision with.
    if grep -q '"reject"' ; then
        echo "these Properties ask to be rejected" >&2
        exit 1
    fi
    ;;
provision)
    # stdin holds the Spec (this script does not read it); INFRAKIT_INSTANCE_ID is the ID
    # the plugin chose: naming the device after it makes a retry find what a failed
    # attempt left.  Print the instance's ID (and extra tags).
    id=$INFRAKIT_INSTANCE_ID
    echo healthy > "$dir/$id"
    printf '{"ID": "%s", "Tags": {"device": "%s"}}\n' "$id" "$id"
    ;;
destroy)
    # INFRAKIT_REASON is terminate or rolling_update (empty from older InfraKit).
    rm -f "$dir/$INFRAKIT_INSTANCE_ID"
    ;;
label)
    ;;
status)
    # One ID a line in INFRAKIT_INSTANCE_IDS; answer {"ID": "healthy|broken|gone", ...}.
    sep=''
    printf '{'
    for id in $INFRAKIT_INSTANCE_IDS; do
        if [ -f "$dir/$id" ]; then health=$(cat "$dir/$id"); else health=gone; fi
        printf '%s"%s": "%s"' "$sep" "$id" "$health"
        sep=', '
    done
    printf '}\n'
    ;;
*)
    echo "unknown hook ${1:-$INFRAKIT_HOOK}" >&2
    exit 2
    ;;
esac
