"""Per-AOI NDVI time series: every month's manifest as one table, plotted in the metadata.

Like the NDVI asset, one run covers many AOIs (the backfill policy); each AOI gets its own
materialization, and its table is written where the IO manager keeps it.
"""

from collections import defaultdict

import dagster as dg

from rasteret_pipelines.defs.assets._common import after_any_upstream_update, beta_backfill_policy
from rasteret_pipelines.defs.assets.ndvi import ndvi_key
from rasteret_pipelines.defs.io_managers import KIND, TABLE, write_value
from rasteret_pipelines.defs.partitions import Partitions, check_aoi_id, split_month_aoi
from rasteret_pipelines.defs.pipeline import timeseries_table
from rasteret_pipelines.defs.plot import ndvi_sparkline_markdown, ndvi_timeseries_svg
from rasteret_pipelines.defs.resources import StorageResource
from rasteret_pipelines.defs.settings import source_slug


def timeseries_key(source_id: str) -> dg.AssetKey:
    """``ndvi_timeseries/<source>_ndvi_timeseries`` (a node label of its own, see :func:`ndvi_key`)."""
    return dg.AssetKey(["ndvi_timeseries", f"{source_slug(source_id)}_ndvi_timeseries"])


def timeseries_asset(
    source_id: str, partitions: Partitions, backfill_policy: dg.BackfillPolicy | None = None
) -> dg.AssetsDefinition:
    """The ``ndvi_timeseries/<source>`` asset, one partition per AOI."""
    key = timeseries_key(source_id)
    where = "/".join(key.path)

    with beta_backfill_policy():  # the one beta parameter used
        define_asset = dg.asset(
            key=key,
            partitions_def=partitions.aoi,
            backfill_policy=backfill_policy or dg.BackfillPolicy.multi_run(500),
            output_required=False,
            ins={"manifests": dg.AssetIn(key=ndvi_key(source_id))},  # AOI -> its month x AOI partitions, inferred
            io_manager_key="rasteret_io",
            group_name="ndvi",
            kinds={"parquet"},
            metadata={KIND: TABLE, "source": source_id},
            automation_condition=after_any_upstream_update(),
            description=(
                "The AOI's NDVI over every materialised month: a table of date, mean and median NDVI and "
                f"valid pixel fraction at `{where}/aoi=<aoi>.parquet`, its mean NDVI plotted in the "
                "metadata (`plot`) and the full chart saved beside it as .svg (`plot_file`)."
            ),
        )

    @define_asset
    def ndvi_timeseries(context: dg.AssetExecutionContext, manifests: dict, storage: StorageResource):
        aoi_ids = [check_aoi_id(k, "partition key") for k in context.partition_keys]
        by_aoi: dict[str, dict] = defaultdict(dict)
        for k, manifest in manifests.items():
            by_aoi[split_month_aoi(k)[1]][k] = manifest
        store = storage.storage()
        for aoi_id in aoi_ids:
            table, metadata = aoi_timeseries(aoi_id, by_aoi.get(aoi_id, {}))
            where = write_value(store, key, partitions.aoi, aoi_id, table)
            metadata["path"] = dg.MetadataValue.path(where)
            metadata["rows"] = table.num_rows
            plot = metadata.pop("_svg")
            metadata["plot_file"] = dg.MetadataValue.path(
                store.write_bytes(plot.encode(), *key.path, f"aoi={aoi_id}.svg")
            )
            yield dg.AssetMaterialization(asset_key=key, partition=aoi_id, metadata=metadata)

    def aoi_timeseries(aoi_id: str, manifests: dict) -> tuple:
        table = timeseries_table(manifests)
        rows = table.to_pylist()
        svg = ndvi_timeseries_svg(
            [r["date"] for r in rows],
            {"mean_ndvi": [r["mean_ndvi"] for r in rows], "median_ndvi": [r["median_ndvi"] for r in rows]},
            [r["valid_fraction"] for r in rows],
            title=f"NDVI of AOI {aoi_id} ({source_id})",
        )
        valid = [r for r in rows if r["mean_ndvi"] is not None]
        metadata = {
            "dates": len(rows),
            "months": len(manifests),
            "first_date": str(rows[0]["date"]) if rows else "",
            "last_date": str(rows[-1]["date"]) if rows else "",
            "mean_ndvi": dg.MetadataValue.float(
                round(sum(r["mean_ndvi"] for r in valid) / len(valid), 4) if valid else float("nan")
            ),
            # short enough for the UI to show in place; the full chart is plot_file
            "plot": dg.MetadataValue.md(ndvi_sparkline_markdown(
                [r["date"] for r in rows], [r["mean_ndvi"] for r in rows], f"NDVI of AOI {aoi_id}",
                [r["valid_fraction"] for r in rows])),
            "_svg": svg,
            "table": dg.MetadataValue.table(
                records=[
                    dg.TableRecord(
                        {
                            "date": str(r["date"]),
                            "mean_ndvi": r["mean_ndvi"] if r["mean_ndvi"] is not None else float("nan"),
                            "median_ndvi": r["median_ndvi"] if r["median_ndvi"] is not None else float("nan"),
                            "valid_fraction": r["valid_fraction"],
                        }
                    )
                    for r in rows[:200]
                ],
                schema=dg.TableSchema(
                    columns=[
                        dg.TableColumn("date", "string"),
                        dg.TableColumn("mean_ndvi", "float"),
                        dg.TableColumn("median_ndvi", "float"),
                        dg.TableColumn("valid_fraction", "float"),
                    ]
                ),
            ),
        }
        return table, metadata

    return ndvi_timeseries
