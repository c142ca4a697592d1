"""`yoda` command line. Each command group lives beside the code it drives and is mounted here; heavy
imports happen inside the commands so `yoda --help` stays fast and the policy core stays backend-free."""
from __future__ import annotations

import typer

# NOTE: no rich markup in help: it would eat bracketed text such as the `[ray]` of an extra's name
app = typer.Typer(help="Yoda: SLO-oriented LLM serving with PD multiplexing.", no_args_is_help=True,
                  pretty_exceptions_enable=False, rich_markup_mode=None)


@app.callback()
def _options(ctx: typer.Context,
             debug: bool = typer.Option(False, "--debug", help="show the full traceback of an unexpected error "
                                        "(default: one line and the file it was written to)")) -> None:
    ctx.meta["yoda_debug"] = debug


def _mount() -> None:
    from traces.cli import trace_app
    app.add_typer(trace_app, name="trace", help="Inspect request traces.")
    from sim.cli import register as register_sim
    register_sim(app)
    for module in ("executor.cli", "calibration.cli", "calibration.fidelity_cli", "serve.cli"):
        try:
            register = __import__(module, fromlist=["register"]).register
        except ModuleNotFoundError as exc:  # optional extras (torch, fastapi) not installed
            if exc.name == module or (exc.name and exc.name.split(".")[0] in (
                    "torch", "triton", "fastapi", "uvicorn", "transformers", "httpx", "safetensors")):
                continue
            raise
        register(app)


_mount()

if __name__ == "__main__":
    app()
