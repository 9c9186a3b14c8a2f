-- Median rank of the final answer per layer, for the report's curves; per model, benchmark and query one
-- extraction run, the first by shown_order (stg_runs) with rows for the query.
select c.run_id, c.model, c.benchmark, c.query, c.layer, c.rank_median, c.share_at_top
from lens_convergence as c
join stg_runs as r using (run_id)
qualify r.shown_order = min(r.shown_order) over (partition by c.model, c.benchmark, c.query)
order by c.model, c.benchmark, c.query, c.layer
