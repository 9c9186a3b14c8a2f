-- Per layer: the mean share of attention on each token segment, for the report; per model and benchmark one
-- extraction run, the first by shown_order (stg_runs) with rows for the query.
select s.run_id, s.model, s.benchmark, s.layer, s.image, s.bos, s.system, s.prompt, s.generated
from segment_shares as s
join stg_runs as r using (run_id)
where s.query = $query
qualify r.shown_order = min(r.shown_order) over (partition by s.model, s.benchmark)
order by s.model, s.benchmark, s.layer
