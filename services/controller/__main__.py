"""``python -m services.controller``: the local controller loop (the laptop's operator).

Reads ModelDeployments from ``$TURNOUT_HOME/deployments``, serves the versions they name,
judges rollouts from Prometheus (``--prometheus URL``) or, without one, by scraping the router
and the model servers directly (``--router URL``), A/B tests from the routers' outcome ledgers
(``--ledger DIR``, $TURNOUT_HOME/ab by default), and writes the router's route table.
SIGTERM or Ctrl-C stops it and the model servers it started; SIGKILL leaves them serving for
the next run to adopt.
"""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path

from services.controller import decisions
from services.controller.local import LocalController
from services.controller.supervisor import Supervisor
from turnout.core.observation import MetricsProvider, WithLedger
from turnout.io.ab_store import DirectoryLedger
from turnout.io.deployments import DeploymentStore
from turnout.io.settings import settings, use_local_model_store


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m services.controller", description=__doc__)
    parser.add_argument("--routes", type=Path, help="route table to write (default: home)")
    parser.add_argument("--prometheus", help="Prometheus base URL to read metrics from")
    parser.add_argument("--router", default="http://127.0.0.1:8080", help="router to scrape")
    parser.add_argument("--targets-file", type=Path, help="Prometheus file_sd targets to write")
    parser.add_argument("--poll", type=float, default=0.1, help="seconds between passes")
    parser.add_argument("--scrape-interval", type=float, default=1.0)
    parser.add_argument(
        "--ledger", type=Path, help="the routers' A/B ledger directory (default: home/ab)"
    )
    args = parser.parse_args(argv)
    decisions.configure_logging(fmt="%(asctime)s controller %(message)s")
    use_local_model_store()
    home = settings().home
    supervisor = Supervisor(home, targets_file=args.targets_file)
    metrics: MetricsProvider
    if args.prometheus:
        from services.controller.prometheus import PrometheusProvider

        metrics = PrometheusProvider(args.prometheus, scrape_interval_s=args.scrape_interval)
    else:
        from services.controller.scrape import ScrapeProvider

        def servers() -> dict[str, str]:
            return {
                s.want.tag.partition(":")[2]: s.url for s in supervisor.servers.values() if s.ready
            }

        metrics = ScrapeProvider(args.router, servers)
    ledger = DirectoryLedger(args.ledger or home / "ab")
    controller = LocalController(
        store=DeploymentStore(home),
        supervisor=supervisor,
        metrics=WithLedger(metrics, ledger),
        routes_file=args.routes or home / "routes.yaml",
        poll_s=args.poll,
        ledgers=ledger,
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        controller.run(stop)
    finally:
        supervisor.stop_all()


if __name__ == "__main__":
    main()
