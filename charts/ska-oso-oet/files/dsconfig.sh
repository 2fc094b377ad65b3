#!/bin/sh
# Write the OET device configuration ($1, dsconfig JSON) into the Tango database at $TANGO_HOST
# with json2tango, in update mode (-u: nothing else of these servers is removed), retrying while
# the database does not answer, for at most $DSCONFIG_TIMEOUT seconds (default 600).
# json2tango exits 0 when nothing had to change and 2 when it wrote changes: both are success.
config=${1:?usage: dsconfig.sh CONFIG.json}
deadline=$(( $(date +%s) + ${DSCONFIG_TIMEOUT:-600} ))
while :; do
    json2tango -w -a -u "$config"
    rc=$?
    case $rc in
        0|2)
            # -u leaves properties the configuration empties ([]): delete those too
            python3 "$(dirname "$0")/clear_emptied.py" "$config" || exit 1
            if [ "$rc" = 0 ]; then
                echo "dsconfig: the Tango database at $TANGO_HOST already had this configuration"
            else
                echo "dsconfig: configuration written to the Tango database at $TANGO_HOST"
            fi
            exit 0 ;;
    esac
    if [ "$(date +%s)" -ge "$deadline" ]; then
        echo "dsconfig: json2tango failed with exit status $rc; giving up" >&2
        exit "$rc"
    fi
    echo "dsconfig: json2tango failed with exit status $rc; retrying in 5 s" >&2
    sleep 5
done
