"""Golden tests of what the cloud loaders send on the paths no local stand-in runs (S3 COPY, BigQuery's staging
types, its transaction script, Snowflake's folded names), and of the shared merge shape."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ledger_pipelines.errors import InvalidExporterConfig
from ledger_pipelines.loaders import DRIVERS, is_log_sink
from ledger_pipelines.loaders.base import Loader
from ledger_pipelines.loaders.bigquery import BigQueryLoader, script
from ledger_pipelines.loaders.clickhouse import keys_as_tsv
from ledger_pipelines.loaders.redshift import RedshiftLoader, copy_from_s3_sql
from ledger_pipelines.loaders.snowflake import SnowflakeLoader, copy_into_sql, put_sql
from ledger_pipelines.tables import ACCOUNTS, BALANCES, DAILY_VOLUMES, LOGS

REDSHIFT = {"host": "cluster.example", "database": "dev", "user": "loader", "password": {"env": "RS_PASSWORD"},
            "s3_bucket": "ledger-stage", "iam_role": "arn:aws:iam::123456789012:role/ledger-copy",
            "region": "eu-west-1"}


def offline(cls: type[Loader], config: dict[str, Any]) -> Any:
    """A loader with its config checked and no connection: what it would generate."""
    loader = cls.__new__(cls)
    Loader.__init__(loader, config, {})
    if cls is BigQueryLoader:
        loader.schema = loader.config["dataset"]
    return loader


def test_redshift_copies_parquet_from_s3_with_its_role():
    assert copy_from_s3_sql('"staged_balances"', ['"ledger"', '"account"'], "s3://ledger-stage/p/b.parquet",
                            REDSHIFT["iam_role"], "eu-west-1") == (
        """COPY "staged_balances" ("ledger", "account") FROM 's3://ledger-stage/p/b.parquet' """
        "IAM_ROLE 'arn:aws:iam::123456789012:role/ledger-copy' FORMAT AS PARQUET SERIALIZETOJSON REGION 'eu-west-1'")


def test_redshift_tables_staging_and_merge():
    loader = offline(RedshiftLoader, REDSHIFT)
    assert loader.config["port"] == 5439 and loader.config["sslmode"] == "require"
    assert loader.create_table_sql(ACCOUNTS) == (
        'CREATE TABLE IF NOT EXISTS "ledger"."accounts" ("ledger" VARCHAR(65535) NOT NULL, "address" VARCHAR(65535) '
        'NOT NULL, "metadata" SUPER NOT NULL, "first_usage" TIMESTAMPTZ, "last_update" TIMESTAMPTZ NOT NULL, '
        '"log_id" BIGINT NOT NULL, PRIMARY KEY ("ledger", "address"))')
    assert loader.create_staging_sql(ACCOUNTS, '"staged_accounts"') == (
        'CREATE TEMP TABLE "staged_accounts" ("ledger" VARCHAR(65535), "address" VARCHAR(65535), '
        '"metadata" VARCHAR(65535), "first_usage" TIMESTAMPTZ, "last_update" TIMESTAMPTZ, "log_id" BIGINT)')
    delete, insert = loader.merge_statements(ACCOUNTS, '"staged_accounts"')
    assert delete == ('DELETE FROM "ledger"."accounts" USING "staged_accounts" s WHERE "ledger"."accounts"."ledger" = '
                      's."ledger" AND "ledger"."accounts"."address" = s."address" AND "ledger"."accounts"."log_id" <= '
                      's."log_id"')
    assert insert == (
        'INSERT INTO "ledger"."accounts" ("ledger", "address", "metadata", "first_usage", "last_update", "log_id") '
        'SELECT s."ledger", s."address", JSON_PARSE(s."metadata"), s."first_usage", s."last_update", s."log_id" '
        'FROM "staged_accounts" s WHERE NOT EXISTS (SELECT 1 FROM "ledger"."accounts" t WHERE t."ledger" = '
        's."ledger" AND t."address" = s."address")')
    assert loader.merge_statements(LOGS, "s")[0].startswith('INSERT INTO "ledger"."logs"')  # append-only: no delete


@pytest.mark.parametrize(("change", "said"), [
    ({"s3_bucket": None}, "S3 staging needs 's3_bucket'"),
    ({"iam_role": "ledger-copy"}, "'iam_role' is a role ARN"),
    ({"s3_bucket": "s3://ledger-stage"}, "bucket name"),
    ({"staging": "scp"}, "'staging' is 's3'"),
    ({"password": "hunter2"}, "is a secret"),
])
def test_redshift_configs_refused_in_one_line(change, said):
    config = {k: v for k, v in {**REDSHIFT, **change}.items() if v is not None}
    with pytest.raises(InvalidExporterConfig, match=said):
        DRIVERS.get("redshift").validate(config)


def test_snowflake_names_fold_to_upper_case_and_json_goes_through_parse_json():
    loader = offline(SnowflakeLoader, {"account": "xy12345.eu-west-1", "user": "loader", "database": "analytics",
                                       "password": {"env": "SF_PASSWORD"}})
    assert loader.qualified(BALANCES) == '"LEDGER"."BALANCES"'
    assert loader.create_table_sql(BALANCES).startswith(
        'CREATE TABLE IF NOT EXISTS "LEDGER"."BALANCES" ("LEDGER" VARCHAR NOT NULL, "ACCOUNT" VARCHAR NOT NULL, '
        '"ASSET" VARCHAR NOT NULL, "ASSET_SCALE" NUMBER(10,0) NOT NULL, "INPUT" NUMBER(38,0) NOT NULL')
    insert = loader.insert_absent_sql(ACCOUNTS, '"STAGED_ACCOUNTS"')
    assert 'PARSE_JSON(s."METADATA")' in insert and insert.startswith('INSERT INTO "LEDGER"."ACCOUNTS" ("LEDGER"')
    assert loader.create_staging_sql(ACCOUNTS, '"STAGED_ACCOUNTS"').startswith(
        'CREATE TRANSIENT TABLE "STAGED_ACCOUNTS" ("LEDGER" VARCHAR, "ADDRESS" VARCHAR, "METADATA" VARCHAR')
    assert put_sql(Path("/tmp/x/s.parquet"), "s") == (
        "PUT 'file:///tmp/x/s.parquet' @ledger_load/s AUTO_COMPRESS = FALSE OVERWRITE = TRUE")
    assert copy_into_sql('"LEDGER"."S"', "s") == ('COPY INTO "LEDGER"."S" FROM @ledger_load/s FILE_FORMAT = '
                                                  "(TYPE = PARQUET) MATCH_BY_COLUMN_NAME = CASE_SENSITIVE PURGE = TRUE")
    with pytest.raises(InvalidExporterConfig, match="one of them"):
        DRIVERS.get("snowflake").validate({"account": "a", "user": "u", "database": "d"})


def test_bigquery_stages_money_as_digits_and_merges_in_one_transaction():
    loader = offline(BigQueryLoader, {"project": "acme-analytics", "dataset": "ledger", "location": "EU"})
    assert loader.create_schema_sql() == ("CREATE SCHEMA IF NOT EXISTS `acme-analytics`.`ledger` "
                                          "OPTIONS (location = 'EU')")
    assert loader.create_table_sql(BALANCES) == (
        "CREATE TABLE IF NOT EXISTS `acme-analytics`.`ledger`.`balances` (`ledger` STRING NOT NULL, `account` STRING "
        "NOT NULL, `asset` STRING NOT NULL, `asset_scale` INT64 NOT NULL, `input` BIGNUMERIC(38, 0) NOT NULL, "
        "`output` BIGNUMERIC(38, 0) NOT NULL, `balance` BIGNUMERIC(38, 0) NOT NULL, `display_balance` STRING NOT NULL, "
        "`log_id` INT64 NOT NULL) CLUSTER BY `ledger`, `account`, `asset`")
    fields = {f.name: f.field_type for f in loader.load_job_config(BALANCES).schema}
    assert fields == {"ledger": "STRING", "account": "STRING", "asset": "STRING", "asset_scale": "INT64",
                      "input": "STRING", "output": "STRING", "balance": "STRING", "display_balance": "STRING",
                      "log_id": "INT64"}
    delete, insert = loader.merge_statements(BALANCES, "`s`")
    assert delete == ("DELETE FROM `acme-analytics`.`ledger`.`balances` AS t WHERE EXISTS (SELECT 1 FROM `s` s WHERE "
                      "t.`ledger` = s.`ledger` AND t.`account` = s.`account` AND t.`asset` = s.`asset` AND "
                      "t.`log_id` <= s.`log_id`)")
    assert "CAST(s.`balance` AS BIGNUMERIC)" in insert
    assert script([delete, insert]) == f"BEGIN TRANSACTION;\n{delete};\n{insert};\nCOMMIT TRANSACTION;"
    with pytest.raises(InvalidExporterConfig, match="'project' is a project id"):
        DRIVERS.get("bigquery").validate({"project": "acme.analytics"})


def test_every_driver_is_listed_and_loads():
    assert sorted(DRIVERS.modules) == ["bigquery", "clickhouse", "duckdb", "http", "postgres", "redshift",
                                       "snowflake"]
    for driver in DRIVERS.modules:
        assert DRIVERS.get(driver).driver == driver
    assert [d for d in DRIVERS.modules if is_log_sink(d)] == ["http"]  # the one that is not a warehouse


def test_the_analyst_views_are_window_sums_every_warehouse_runs():
    bigquery = offline(BigQueryLoader, {"project": "p", "dataset": "ledger"})
    window = "OVER (PARTITION BY `ledger`, `account`, `asset` ORDER BY `day` ROWS BETWEEN UNBOUNDED PRECEDING AND " \
             "CURRENT ROW)"
    assert bigquery.analyst_views()["daily_balances"] == (
        "SELECT `ledger`, `account`, `asset`, `day`, `asset_scale`, `input`, `output`, "
        f"SUM(`input`) {window} AS `closing_input`, SUM(`output`) {window} AS `closing_output`, "
        f"SUM(`input` - `output`) {window} AS `closing_balance` FROM `p`.`ledger`.`daily_volumes`")
    effective = bigquery.analyst_views()["moves_effective"]
    assert effective.endswith(
        "SUM(`signed_amount`) OVER (PARTITION BY `ledger`, `account`, `asset` ORDER BY `timestamp`, `transaction_id`, "
        "`posting_index`, `is_source` DESC ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS "
        "`post_commit_effective_balance` FROM `p`.`ledger`.`moves`")
    assert bigquery.create_view_sql("daily_balances", "SELECT 1") == [
        "DROP VIEW IF EXISTS `p`.`ledger`.`daily_balances`", "CREATE VIEW `p`.`ledger`.`daily_balances` AS SELECT 1"]
    assert bigquery.create_table_sql(DAILY_VOLUMES) == (
        "CREATE TABLE IF NOT EXISTS `p`.`ledger`.`daily_volumes` (`ledger` STRING NOT NULL, `account` STRING NOT NULL, "
        "`asset` STRING NOT NULL, `day` DATE NOT NULL, `asset_scale` INT64 NOT NULL, "
        "`input` BIGNUMERIC(38, 0) NOT NULL, `output` BIGNUMERIC(38, 0) NOT NULL, `log_id` INT64 NOT NULL) "
        "CLUSTER BY `ledger`, `account`, `asset`, `day`")
    snowflake = offline(SnowflakeLoader, {"account": "xy12345.eu-west-1", "user": "loader", "database": "analytics",
                                          "password": {"env": "SF_PASSWORD"}})
    assert snowflake.analyst_views()["daily_balances"].endswith(
        'SUM("INPUT" - "OUTPUT") OVER (PARTITION BY "LEDGER", "ACCOUNT", "ASSET" ORDER BY "DAY" ROWS BETWEEN UNBOUNDED '
        'PRECEDING AND CURRENT ROW) AS "CLOSING_BALANCE" FROM "LEDGER"."DAILY_VOLUMES"')
    redshift = offline(RedshiftLoader, REDSHIFT)
    assert redshift.analyst_views()["moves_effective"].startswith('SELECT "ledger", "transaction_id"')
    assert redshift.truncate_sql(DAILY_VOLUMES) == 'TRUNCATE TABLE "ledger"."daily_volumes"'


@pytest.mark.parametrize(("signed", "scale", "shown"), [
    ("12345", 2, "123.45"), ("-5", 2, "-0.05"), ("0", 2, "0.00"), ("-100", 2, "-1.00"), ("7", 0, "7"),
    ("-7", 0, "-7"), ("1", 18, "0.000000000000000001"), ("-120", 1, "-12.0"),
    ("-" + "9" * 76, 76, "-0." + "9" * 76), ("9" * 76, 3, "9" * 73 + ".999"), ("3", 77, "3E-77"),
])
def test_display_amounts_are_exact_text_at_the_asset_scale(signed, scale, shown):
    from decimal import Decimal, localcontext

    from ledger_pipelines.transforms import Transformer

    with Transformer() as transformer:
        [(got,)] = transformer._db.execute("SELECT main.display_amount(ltrim($s, '-'), starts_with($s, '-'), $scale)",
                                           {"s": signed, "scale": scale}).fetchall()
    assert got == shown
    with localcontext(prec=200):
        assert Decimal(got) == Decimal(signed).scaleb(-scale)  # exactly the amount, at the scale


@pytest.mark.parametrize(("asset", "scale"), [("USD/2", 2), ("JPY", 0), ("ETH/18", 18), ("EUR_CENTS/0", 0),
                                              ("X/999999", 999999)])
def test_the_asset_scale_is_the_assets_precision(asset, scale):
    from ledger_pipelines.transforms import Transformer

    with Transformer() as transformer:
        assert transformer._db.execute("SELECT main.asset_scale(?)", [asset]).fetchall() == [(scale,)]


def test_clickhouse_sends_a_folds_keys_as_tsv_parameters_escaped_twice():
    """TSV's escapes per key, then the parameter's own (what the server and chdb unescape once); clickhouse-connect
    must pass the prepared text on unchanged, over HTTP as in chdb."""
    from clickhouse_connect.driver.binding import bind_query

    keys = ["users:1", "a\tb", "c\nd", "e\\f", "g'h", ""]
    [text] = keys_as_tsv(keys)
    assert str(text) == "users:1\\n" "a\\\\tb\\n" "c\\\\nd\\n" "e\\\\\\\\f\\n" "g'h\\n" "\\n"
    assert [str(t) for t in keys_as_tsv([7, -2, 2**62])] == ["7\\n-2\\n4611686018427387904\\n"]
    assert keys_as_tsv([]) == []
    query = "SELECT key FROM format(TSV, 'key String', {keys_0:String})"
    assert bind_query(query, {"keys_0": text}) == (query, {"param_keys_0": str(text)})
    # Split at rows only: the parts put together are the whole, each at most the limit and one row over it.
    parts = [str(t) for t in keys_as_tsv(keys, 12)]
    assert len(parts) > 1 and "".join(parts) == str(text) and all(p.endswith("\\n") for p in parts)
    assert all(len(p) <= 12 + len("e\\\\\\\\f\\n") for p in parts)  # the longest row


def test_clickhouse_keys_parameters_stay_under_a_servers_form_field_limit():
    """A server refuses a form field over `http_max_field_value_size` (128 KiB by default), and clickhouse-connect
    sends long parameters as form fields: a batch's keys, however many and however long, go in several."""
    from ledger_core.validation import MAX_ADDRESS_LENGTH

    keys = [f"users:{i}" for i in range(40_000)] + ["x" * MAX_ADDRESS_LENGTH] * 300
    texts = keys_as_tsv(keys)
    assert len(texts) > 1 and all(len(str(t).encode()) < 128 * 1024 for t in texts)
    assert "".join(map(str, texts)).count("\\n") == len(keys)
