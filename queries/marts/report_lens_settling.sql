-- From which layer the answer stays top-1, for the report's table; per model, benchmark and query one extraction
-- run, the first by shown_order (stg_runs) with rows for the query.
select s.run_id, s.model, s.benchmark, s.query, s.n_layers, s.n_samples, s.median_settle_layer, round(s.share_settled_early, 3) as share_settled_early
from lens_settling as s
join stg_runs as r using (run_id)
qualify r.shown_order = min(r.shown_order) over (partition by s.model, s.benchmark, s.query)
order by s.model, s.benchmark, s.query
