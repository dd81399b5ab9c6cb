"""Per-AOI NDVI time series: every month's manifest as one table, plotted in the metadata."""


import dagster as dg

from rasteret_pipelines.defs.assets._common import after_any_upstream_update
from rasteret_pipelines.defs.assets.ndvi import ndvi_key
from rasteret_pipelines.defs.io_managers import KIND, TABLE
from rasteret_pipelines.defs.partitions import AOI_DIMENSION, Partitions
from rasteret_pipelines.defs.pipeline import timeseries_table
from rasteret_pipelines.defs.plot import ndvi_timeseries_svg, svg_markdown
from rasteret_pipelines.defs.resources import StorageResource
from rasteret_pipelines.defs.settings import source_slug


def timeseries_key(source_id: str) -> dg.AssetKey:
    return dg.AssetKey(["ndvi_timeseries", source_slug(source_id)])


def timeseries_asset(source_id: str, partitions: Partitions) -> dg.AssetsDefinition:
    """The ``ndvi_timeseries/<source>`` asset, one partition per AOI."""
    slug = source_slug(source_id)

    @dg.asset(
        key=timeseries_key(source_id),
        partitions_def=partitions.aoi,
        ins={
            "manifests": dg.AssetIn(
                key=ndvi_key(source_id),
                partition_mapping=dg.MultiToSingleDimensionPartitionMapping(
                    partition_dimension_name=AOI_DIMENSION
                ),
            )
        },
        io_manager_key="rasteret_io",
        group_name="ndvi",
        kinds={"parquet"},
        metadata={KIND: TABLE, "source": source_id},
        automation_condition=after_any_upstream_update(),
        description=(
            "The AOI's NDVI over every materialised month: a table of date, mean and median NDVI and "
            f"valid pixel fraction at ndvi_timeseries/{slug}/aoi=<aoi>.parquet, plotted in the "
            "metadata (and saved beside it as .svg)."
        ),
    )
    def ndvi_timeseries(context: dg.AssetExecutionContext, manifests: dict, storage: StorageResource):
        aoi_id = context.partition_key
        table = timeseries_table(manifests)
        rows = table.to_pylist()
        svg = ndvi_timeseries_svg(
            [r["date"] for r in rows],
            {"mean_ndvi": [r["mean_ndvi"] for r in rows], "median_ndvi": [r["median_ndvi"] for r in rows]},
            [r["valid_fraction"] for r in rows],
            title=f"NDVI of AOI {aoi_id} ({source_id})",
        )
        plot_uri = storage.storage().write_bytes(svg.encode(), "ndvi_timeseries", slug, f"aoi={aoi_id}.svg")
        valid = [r for r in rows if r["mean_ndvi"] is not None]
        metadata = {
            "dates": len(rows),
            "months": len(manifests),
            "first_date": str(rows[0]["date"]) if rows else "",
            "last_date": str(rows[-1]["date"]) if rows else "",
            "mean_ndvi": dg.MetadataValue.float(
                round(sum(r["mean_ndvi"] for r in valid) / len(valid), 4) if valid else float("nan")
            ),
            "plot": dg.MetadataValue.md(svg_markdown(svg, f"NDVI of AOI {aoi_id}")),
            "plot_file": dg.MetadataValue.path(plot_uri),
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
        return dg.Output(table, metadata=metadata)

    return ndvi_timeseries
