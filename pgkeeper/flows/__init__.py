"""One module per user-facing flow. Orchestration only: which tasks, in what order."""

from pgkeeper import runinfo, runlog
from pgkeeper.flows.heartbeat import stop_heartbeats_without_waiting
from pgkeeper.flows.storage_default import ask_once_per_run_start

# Every process that runs a flow (the CLI, a worker's run process) imports this package first.
runlog.install()
runinfo.tag_every_run()
stop_heartbeats_without_waiting()
ask_once_per_run_start()
