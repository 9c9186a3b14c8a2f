"""The notebook API: ``attnwh.open(path)`` gives a read-only handle on a warehouse.

Every table, query and chart comes back as the object notebooks work with: DuckDB relations
(``.arrow()``, ``.df()`` with pandas, ``.pl()`` with polars), an ``xarray.DataArray`` on Dask for raw
rows, Altair charts that render inline in Jupyter. The handle holds one locked DuckDB session (the
same as ``attnwh sql``: only reads, nothing outside the warehouse, parameters bound, never pasted);
close it with ``close()`` or a ``with`` block.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb

from attnwh.core.errors import UsageError
from attnwh.queries.library import bind_parameters, check_runs_named, get_mart, open_session


class Warehouse:
    """A read-only view of one warehouse (``attnwh.open``)."""

    def __init__(self, path: Path | str | None = None):
        self._session = open_session(path)
        self._warehouse = self._session.warehouse
        self.warnings: list[str] = list(self._session.warnings)  # damaged runs left out, as the CLI warns

    @property
    def path(self) -> Path:
        return self._warehouse.root

    def runs(self) -> duckdb.DuckDBPyRelation:
        """One row per run (the ``runs`` view)."""
        return self._session.relation("select * from runs order by created, run_id")

    def sql(self, statement: str, **parameters: Any) -> duckdb.DuckDBPyRelation:
        """One read-only statement (SELECT or EXPLAIN) with ``$name`` parameters bound from keywords."""
        return self._session.user_relation(statement, parameters or None)

    def gen_rows(self, run_id: str):
        """The raw rows of every generated step (runs extracted with ``--queries gen --gen-rows``) as an
        ``xarray.DataArray`` backed by Dask: dimensions ``sample, step, layer, head, key`` (step ``t`` sees the
        sample's keys and ``t`` generated ones; NaN past a row's end and for steps the answer did not take)."""
        from attnwh.warehouse.arrays import GEN_DIMENSIONS, open_gen_rows

        xarray, paths = self._xarray("gen_rows"), self._run_paths(run_id)
        array, sample_idx = open_gen_rows(paths)
        _, n_steps, n_layers, n_heads, n_keys = array.shape
        coords = {**self._sample_coords(run_id, sample_idx), "step": range(n_steps), "layer": range(n_layers), "head": range(n_heads), "key": range(n_keys)}
        return xarray.DataArray(array, dims=GEN_DIMENSIONS, coords=coords, name="gen_attention", attrs={"run_id": run_id})

    def query(self, name: str, **parameters: Any) -> duckdb.DuckDBPyRelation:
        """A named query of the library (``attnwh query --list``), its parameters typed and checked."""
        mart, given = get_mart(name), {key: str(value) for key, value in parameters.items()}
        bound = bind_parameters(mart, given)
        check_runs_named(self._session, name, given)
        return self._session.relation(mart.sql, bound)

    def rows(self, run_id: str):
        """The run's raw attention rows as an ``xarray.DataArray`` backed by Dask (nothing is read until computed).

        Dimensions ``sample, query, layer, head, key`` (keys from the sample's first real token, NaN
        past a row's end); coordinates ``sample`` (the plan's sample index) with ``sample_key``,
        ``query`` names, ``layer`` and ``head`` numbers.
        """
        from attnwh.warehouse.arrays import DIMENSIONS, open_rows

        xarray, paths = self._xarray("rows"), self._run_paths(run_id)
        array, sample_idx, queries = open_rows(paths)
        _, _, n_layers, n_heads, n_keys = array.shape
        coords = {**self._sample_coords(run_id, sample_idx), "query": queries, "layer": range(n_layers), "head": range(n_heads), "key": range(n_keys)}
        return xarray.DataArray(array, dims=DIMENSIONS, coords=coords, name="attention", attrs={"run_id": run_id})

    def show(
        self,
        run_id: str,
        sample: str | int,
        layer: int | None = None,
        head: int | None = None,
        top: int | None = None,
        score: str = "concentration_x_sum",
        query: str = "gen1",
        data: Path | str | None = None,
        model: str | None = None,
    ):
        """Where heads look (``attnwh show``): the sample's image (a benchmark key, or its index in the plan) with one
        head's attention (``layer``, ``head``), a layer's head-mean (``layer``), or the run's ``top`` heads by ``score``,
        drawn from the stored rows. A figure that shows itself in Jupyter; ``.png()``, ``.svg()``, ``.html()``."""
        from attnwh.face.pictures import DEFAULT_TOP, HeadChoice, show

        top = DEFAULT_TOP if top is None and layer is None else top
        return show(self._session, run_id, str(sample), HeadChoice(layer=layer, head=head, top=top, score=score), query, Path(data) if data else None, model)

    def overlays(self, run_id: str, samples: list[str | int], query: str = "gen1", side: int = 64, data: Path | str | None = None, model: str | None = None):
        """Every head's attention over each sample's image as an ``xarray.DataArray`` (sample, layer, head, y, x): a
        ``side`` × ``side`` grid over each image, ``y`` and ``x`` in units of its height and width, values in attention
        per image token (bilinear between the tokens' centres; NaN where no token reads the image)."""
        from attnwh.face.pictures import overlay_array

        self._xarray("overlays")
        return overlay_array(self._session, run_id, [str(sample) for sample in samples], query, side, Path(data) if data else None, model)

    @staticmethod
    def _xarray(method: str):
        try:
            import xarray
        except ImportError as exc:  # an optional dependency
            raise UsageError(f"{method}() needs xarray: pip install 'attnwh[notebook]'") from exc
        return xarray

    def _run_paths(self, run_id: str):
        paths = self._warehouse.find_run(run_id)
        if paths is None:
            raise UsageError(f"no run {run_id} in {self.path}")
        return paths

    def _sample_coords(self, run_id: str, sample_idx) -> dict[str, Any]:
        """The ``sample`` coordinate (the plan's sample index) with each sample's ``sample_key``."""
        samples = self._session.query("select sample_idx, sample_key from samples where run_id = $run", {"run": run_id}).to_pylist()
        keys = {row["sample_idx"]: row["sample_key"] for row in samples}
        return {"sample": sample_idx, "sample_key": ("sample", [keys.get(int(index)) for index in sample_idx])}

    def chart(self, name: str, query: str = "gen1"):
        """A chart of the report (``head_image_sum``, ``masking_curves``, ...) as an Altair chart."""
        import altair as alt

        from attnwh.reports.build import chart_spec

        spec = chart_spec(self._session, name, query)
        if spec is None:
            raise UsageError(f"chart {name} has no data in {self.path}")
        kinds = (("layer", alt.LayerChart), ("facet", alt.FacetChart), ("hconcat", alt.HConcatChart), ("vconcat", alt.VConcatChart), ("concat", alt.ConcatChart))
        chart_class = next((kind for key, kind in kinds if key in spec), alt.Chart)
        return chart_class.from_dict(spec, validate=False)

    def charts(self) -> list[str]:
        """The names ``chart`` takes."""
        from attnwh.reports.build import chart_sections

        return sorted(chart_sections())

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> "Warehouse":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"attnwh.Warehouse({str(self.path)!r})"


def open(path: Path | str | None = None) -> Warehouse:  # noqa: A001  (attnwh.open, as the issue names it)
    """Open a warehouse for reading (default: ``$ATTNWH_WAREHOUSE``, else ``./attnwh-warehouse``)."""
    return Warehouse(path)
