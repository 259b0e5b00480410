"""Errors of the pipelines: one root, small named classes with the fields a caller needs."""

from __future__ import annotations


def first_line(exc: BaseException, default: str = "") -> str:
    """A driver's message in one line (libpq's run to several: a DETAIL, a HINT); `default` if it has none."""
    said = str(exc).strip()
    return said.splitlines()[0] if said else default


class PipelineError(Exception):
    """Root of every error the pipelines package raises on purpose."""

    error_code = "PIPELINE"


class InvalidExporterConfig(PipelineError):
    """An exporter's driver or config was refused; nothing was stored."""

    error_code = "VALIDATION"

    def __init__(self, driver: str, message: str):
        super().__init__(f"invalid config for driver '{driver}': {message}")
        self.driver = driver


class ExporterNotFound(PipelineError):
    """No exporter with this id."""

    error_code = "NOT_FOUND"

    def __init__(self, exporter_id: str):
        super().__init__(f"exporter '{exporter_id}' not found")
        self.exporter_id = exporter_id


class ExporterInUse(PipelineError):
    """An exporter with pipelines attached cannot be deleted."""

    error_code = "CONFLICT"

    def __init__(self, exporter_id: str, pipelines: list[str]):
        super().__init__(f"exporter '{exporter_id}' still has pipelines: {', '.join(pipelines)}; delete them first")
        self.exporter_id = exporter_id
        self.pipelines = pipelines


class PipelineNotFound(PipelineError):
    """No pipeline with this id."""

    error_code = "NOT_FOUND"

    def __init__(self, pipeline_id: str):
        super().__init__(f"pipeline '{pipeline_id}' not found")
        self.pipeline_id = pipeline_id


class PipelineAlreadyExists(PipelineError):
    """One (ledger, exporter) pair has at most one pipeline."""

    error_code = "CONFLICT"

    def __init__(self, ledger: str, exporter: str, existing: str):
        super().__init__(f"ledger '{ledger}' already has pipeline '{existing}' to exporter '{exporter}'")
        self.existing = existing


class NameTaken(PipelineError):
    """Another exporter or pipeline has this name."""

    error_code = "CONFLICT"

    def __init__(self, kind: str, name: str):
        super().__init__(f"an {kind} named '{name}' exists already; choose another --name" if kind == "exporter"
                         else f"a {kind} named '{name}' exists already; choose another --name")
        self.name = name


class PipelineStopped(PipelineError):
    """The pipeline is stopped; start it before syncing."""

    error_code = "PIPELINE_STOPPED"

    def __init__(self, pipeline_id: str):
        super().__init__(f"pipeline '{pipeline_id}' is stopped; run `ledgerctl pipelines start {pipeline_id}`")
        self.pipeline_id = pipeline_id


class PipelineBusy(PipelineError):
    """Another process is syncing this pipeline right now."""

    error_code = "PIPELINE_BUSY"

    def __init__(self, pipeline_id: str):
        super().__init__(f"pipeline '{pipeline_id}' is being synced by another process")
        self.pipeline_id = pipeline_id


class CursorMoved(PipelineError):
    """The cursor changed under a running sync (a reset): the batch is in the warehouse, the cursor is the reset's."""

    error_code = "CURSOR_MOVED"

    def __init__(self, pipeline_id: str, expected: int):
        super().__init__(f"pipeline '{pipeline_id}' no longer stands at log {expected} (reset during the sync?); "
                         "nothing is lost: sync again to continue from its cursor")
        self.pipeline_id = pipeline_id


class InvalidReset(PipelineError):
    """A reset target outside the ledger's log."""

    error_code = "VALIDATION"


class MissingSecret(PipelineError):
    """A config names an environment variable that is not set."""

    error_code = "MISSING_SECRET"

    def __init__(self, driver: str, key: str, variable: str):
        super().__init__(f"driver '{driver}': '{key}' reads the environment variable {variable}, which is not set")
        self.variable = variable


class ValueOutOfRange(PipelineError):
    """A money value does not fit the warehouse's exact type: the pipeline stops rather than round."""

    error_code = "VALUE_OUT_OF_RANGE"

    def __init__(self, log_id: int, table: str, column: str, value: int, digits: int, detail: str = ""):
        super().__init__(
            f"log {log_id}: {table}.{column} = {value} has {len(str(abs(value)))} digits; "
            f"the warehouse holds at most {digits} exactly{detail}"
        )
        self.log_id = log_id
        self.table = table
        self.column = column
        self.value = value
        self.digits = digits

    def after_loading(self, cursor: int, remedy: str) -> ValueOutOfRange:
        """The same error, saying what was loaded and how to go on without losing anything."""
        return ValueOutOfRange(self.log_id, self.table, self.column, self.value, self.digits,
                               f". Every log up to {cursor} is loaded and the pipeline waits at log {self.log_id}. "
                               f"To go on without losing anything: {remedy}")


class WarehouseAhead(PipelineError):
    """The warehouse holds logs the ledger does not: the ledger was restored from an older backup, or the
    exporter points at another ledger's warehouse."""

    error_code = "WAREHOUSE_AHEAD"

    def __init__(self, pipeline_id: str, ledger: str, held: int, head: int):
        super().__init__(
            f"pipeline '{pipeline_id}': the warehouse holds logs up to {held} of ledger '{ledger}', which ends at "
            f"log {head}. Was the ledger restored from an older backup, or does the exporter point at another "
            "ledger's warehouse? Nothing was loaded; point the exporter at an empty warehouse (or drop its "
            "sync_state row for this pipeline) to rebuild it from the ledger"
        )
        self.held = held
        self.head = head


class LogChainBroken(PipelineError):
    """A log the sync was about to export does not verify against the hash chain: nothing of the batch loads."""

    error_code = "CHAIN_BROKEN"

    def __init__(self, ledger: str, log_id: int, reason: str):
        super().__init__(
            f"ledger '{ledger}': log {log_id} does not verify ({reason}); nothing of this batch was loaded. "
            f"The ledger's data was altered: run `ledgerctl logs verify --deep {ledger}` to see what changed, and "
            "restore the ledger database from a backup before syncing again"
        )
        self.ledger = ledger
        self.log_id = log_id
        self.reason = reason


class LogGap(PipelineError):
    """The log reader saw ids that are not contiguous: never load past a hole."""

    error_code = "LOG_GAP"

    def __init__(self, ledger: str, expected: int, found: int):
        super().__init__(f"ledger '{ledger}': expected log {expected}, read {found}")


class LogIncomplete(PipelineError):
    """A log lacks a field its type requires (a move without its post-commit volumes): nothing of it loads."""

    error_code = "LOG_INCOMPLETE"

    def __init__(self, log_id: int, table: str, column: str):
        super().__init__(f"log {log_id} gives no {table}.{column}: the log lacks a field its type requires; "
                         "`ledgerctl logs verify --deep` compares the log with the ledger's tables")
        self.log_id = log_id
        self.table = table
        self.column = column


class MissingBaseRow(PipelineError):
    """A log changes a row the warehouse does not hold: the warehouse lost data; reset the pipeline to 0."""

    error_code = "WAREHOUSE_INCOMPLETE"


class LedgerUnreachable(PipelineError):
    """The ledger's database refused a connection or dropped one while logs were read; retrying may succeed."""

    error_code = "LEDGER_UNREACHABLE"


class LoadError(PipelineError):
    """The warehouse refused a load; the cursor did not move."""

    error_code = "LOAD_FAILED"


class TransientLoadError(LoadError):
    """The warehouse could not be reached or timed out; retrying later may succeed."""

    error_code = "LOAD_TRANSIENT"


class DeliveryRefused(LoadError):
    """A receiver refused a delivery for good (a 4xx): the pipeline is stopped until someone starts it again."""

    error_code = "DELIVERY_REFUSED"
    stops_pipeline = True  # retrying cannot help: the sync stops the pipeline, with this in its lastError

    def __init__(self, driver: str, status: int, message: str):
        super().__init__(f"{driver}: {message}; the pipeline is stopped: fix the receiver or the exporter's config, "
                         "then `ledgerctl pipelines start` it (the same logs are delivered again)")
        self.status = status


class ChecksFailed(PipelineError):
    """The warehouse differs from the ledger at the pipeline's cursor (the checks say where)."""

    error_code = "CHECK_FAILED"

    def __init__(self, pipeline_id: str, failed: list[str]):
        super().__init__(f"pipeline '{pipeline_id}': {len(failed)} check(s) failed: {', '.join(failed)}; their "
                         "first_differences are above")
        self.pipeline_id = pipeline_id
        self.failed = failed
