"""Errors of the ledger core: one root, small named classes with the fields a caller needs.

Each class carries an `error_code` from Formance v2's vocabulary so API and CLI users see familiar codes.
"""

from __future__ import annotations


class LedgerError(Exception):
    """Root of every error the ledger core raises on purpose."""

    error_code = "INTERNAL"
    command_index: int | None = None  # set by the writer: which command of a write was refused (0-based)

    def __reduce__(self) -> tuple:
        # Rebuilt from its message and fields, not by calling __init__ again (whose arguments differ per class),
        # so a refusal crosses processes whole: the API's writer process sends them to its HTTP processes.
        return _rebuild, (type(self), self.args, dict(self.__dict__))


def _rebuild(cls: type[LedgerError], args: tuple, fields: dict) -> LedgerError:
    error = cls.__new__(cls)
    error.args = args
    error.__dict__.update(fields)
    return error


class ValidationError(LedgerError):
    """Input that breaks a rule of the ledger; nothing was written."""

    error_code = "VALIDATION"

    def __init__(self, message: str, *, field: str | None = None):
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field


class LedgerNotFound(LedgerError):
    """The named ledger does not exist."""

    error_code = "LEDGER_NOT_FOUND"

    def __init__(self, ledger: str):
        super().__init__(f"ledger '{ledger}' does not exist")
        self.ledger = ledger


class LedgerAlreadyExists(LedgerError):
    """A ledger with this name exists already."""

    error_code = "LEDGER_ALREADY_EXISTS"

    def __init__(self, ledger: str):
        super().__init__(f"ledger '{ledger}' already exists")
        self.ledger = ledger


class TransactionNotFound(LedgerError):
    """No transaction with this id in the ledger."""

    error_code = "NOT_FOUND"

    def __init__(self, ledger: str, transaction_id: int):
        super().__init__(f"transaction {transaction_id} not found in ledger '{ledger}'")
        self.ledger = ledger
        self.transaction_id = transaction_id


class AccountNotFound(LedgerError):
    """No account with this address in the ledger."""

    error_code = "NOT_FOUND"

    def __init__(self, ledger: str, address: str):
        super().__init__(f"account '{address}' not found in ledger '{ledger}'")
        self.ledger = ledger
        self.address = address


class InsufficientFunds(LedgerError):
    """A source account would fall below what its overdraft rule allows."""

    error_code = "INSUFFICIENT_FUND"

    def __init__(self, account: str, asset: str, balance: int, needed: int, *, transaction_index: int = 0):
        super().__init__(
            f"insufficient funds: account '{account}' holds {balance} {asset} and would need {needed}"
            + (f" (transaction #{transaction_index} of the batch)" if transaction_index else "")
        )
        self.account = account
        self.asset = asset
        self.balance = balance
        self.needed = needed
        self.transaction_index = transaction_index


class VolumesOutOfRange(LedgerError):
    """A write would take an account's input or output volume past the ledger's 76-digit bound."""

    error_code = "VOLUMES_OUT_OF_RANGE"

    def __init__(self, account: str, asset: str, volume: str, digits: int):
        super().__init__(
            f"account '{account}' would hold an {volume} volume of more than {digits} digits in {asset}; "
            f"the ledger keeps every volume within {digits} digits so every warehouse can hold it exactly"
        )
        self.account = account
        self.asset = asset
        self.volume = volume


class IdempotencyConflict(LedgerError):
    """The idempotency key was used before with a different request."""

    error_code = "CONFLICT"

    def __init__(self, key: str):
        super().__init__(f"idempotency key '{key}' was already used with a different request")
        self.key = key


class ReferenceConflict(LedgerError):
    """Another transaction of the ledger already has this reference."""

    error_code = "CONFLICT"

    def __init__(self, reference: str, existing_id: int | None = None):
        suffix = f" (transaction {existing_id})" if existing_id is not None else ""
        super().__init__(f"reference '{reference}' is already used{suffix}")
        self.reference = reference
        self.existing_id = existing_id


class AlreadyReverted(LedgerError):
    """The transaction was reverted before."""

    error_code = "ALREADY_REVERT"

    def __init__(self, transaction_id: int):
        super().__init__(f"transaction {transaction_id} is already reverted")
        self.transaction_id = transaction_id


class ChainBroken(LedgerError):
    """A log's stored hash does not match the hash recomputed from the chain."""

    error_code = "CHAIN_BROKEN"

    def __init__(self, ledger: str, log_id: int, reason: str):
        super().__init__(f"ledger '{ledger}': log {log_id} does not verify ({reason})")
        self.ledger = ledger
        self.log_id = log_id
        self.reason = reason


class LedgerInconsistent(LedgerError):
    """A ledger table differs from what replaying the log gives: the table was altered outside the write path."""

    error_code = "LEDGER_INCONSISTENT"

    def __init__(self, ledger: str, table: str, key: dict, columns: list[str], log_value: str, table_value: str):
        where = ", ".join(f"{k}={v}" for k, v in key.items())
        what = f" in {', '.join(columns)}" if columns else ""
        super().__init__(f"ledger '{ledger}': {table} ({where}) differs from the log's replay{what}: "
                         f"the log says {log_value}, the table holds {table_value}")
        self.ledger = ledger
        self.table = table
        self.key = key
        self.columns = columns


class SchemaOutOfDate(LedgerError):
    """The database's schema is not the version this code expects: say what to run."""

    error_code = "SCHEMA_OUT_OF_DATE"

    def __init__(self, component: str, have: int, need: int):
        advice = ("run `ledgerctl db migrate` (it needs a role with CREATE privilege)" if have < need else
                  "this ledgerctl is older than the database: upgrade it")
        super().__init__(f"the ledger database's {component} schema is at version {have}, this code expects {need}; "
                         f"{advice}")
        self.component = component
        self.have = have
        self.need = need


class LocalServerError(LedgerError):
    """The local PostgreSQL server could not be found, initialised or started."""

    error_code = "LOCAL_SERVER"
