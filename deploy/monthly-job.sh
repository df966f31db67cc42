#!/usr/bin/env bash
# The monthly job: every asset class's MLflow Project run (`-e main`), one after another, never
# two at once on one device, each in its own process so that one class's crash (even an
# out-of-memory kill) cannot take the next class down. Run by the Railway cron service
# kronos-rolling-finetune, deploy/crontab and deploy/kubernetes/cronjob.yaml at 06:00 UTC on the
# 1st of every month. Whether a class is due (monthly, or quarterly after stable months) is
# decided inside the job, so the schedule never changes.
#
#   bash deploy/monthly-job.sh [more `mlflow run` options, e.g. -P epochs=5 -P device=cuda]
#
# Environment (all optional except the tracking server; without MLFLOW_TRACKING_URI it exits 2 at once):
#   MLFLOW_TRACKING_URI, MLFLOW_TRACKING_USERNAME, MLFLOW_TRACKING_PASSWORD   the tracking server
#   KRONOS_ALERT_WEBHOOK   where failures are reported (Slack-compatible JSON)
#   KRONOS_BASE_MODEL      the frozen base (default NeoQuasar/Kronos-base)
#   KRONOS_DATA_DIR        market data folder (default: the bundled sample)
#   KRONOS_AS_OF           decision date YYYY-MM-DD (default: today, UTC, taken once for all classes)
#   KRONOS_ASSET_CLASSES   classes, in order (default: crypto forex_commodity equity)
#   KRONOS_ENV_MANAGER     local (default: the image has everything installed) | conda | virtualenv
#   KRONOS_PROJECT_URI     the MLflow Project (default: this checkout)
#   PYTHON                 interpreter with kronos-rolling installed (default: python)
#
# A class whose `mlflow run` fails before our code ran (e.g. --env-manager conda without conda)
# leaves the run MLflow created RUNNING; the script ends such runs as FAILED.
#
# Exit status 0 when every class finished: trained and promoted, refused by the guard, or not
# due. Otherwise 1, after one job_failed alert naming the classes that failed (each failure
# inside a class's job has already sent its own alert with the error).
set -uo pipefail

if [ -z "${MLFLOW_TRACKING_URI:-}" ]; then
    echo "error: MLFLOW_TRACKING_URI is not set: every class's run would go to MLflow's default store" \
         "(./mlflow.db in the folder mlflow runs in), which no tracking server or predictor reads." \
         "Set it to your tracking server, e.g. MLFLOW_TRACKING_URI=http://127.0.0.1:5000 bash deploy/monthly-job.sh" \
         "for the demo's" >&2
    exit 2
fi

project="${KRONOS_PROJECT_URI:-$(cd "$(dirname "$0")/.." && pwd)}"
as_of="${KRONOS_AS_OF:-$(date -u +%Y-%m-%d)}"
failed=()
for asset_class in ${KRONOS_ASSET_CLASSES:-crypto forex_commodity equity}; do
    echo "== $asset_class, as of $as_of"
    started_ms="$(date +%s)000"
    if ! mlflow run "$project" -e main --env-manager "${KRONOS_ENV_MANAGER:-local}" \
            --experiment-name "kronos-rolling/$asset_class" \
            -P asset_class="$asset_class" -P as_of="$as_of" "$@"; then
        failed+=("$asset_class")
        echo "== $asset_class FAILED" >&2
        "${PYTHON:-python}" -m kronos_rolling.cli cron unfinished --since "$started_ms" "kronos-rolling/$asset_class" ||
            echo "== could not end $asset_class's unfinished runs (is the tracking server up?)" >&2
    fi
done

if [ "${#failed[@]}" -gt 0 ]; then
    "${PYTHON:-python}" -m kronos_rolling.cli cron failed --as-of "$as_of" "${failed[@]}"
    exit 1
fi
echo "== every class finished"
