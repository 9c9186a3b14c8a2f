-- Per layer on normalised depth: mean image sum, concentration and their product, for the report's cross-model
-- profiles; per model and benchmark one extraction run, the first by shown_order (stg_runs) with rows for the query.
select p.run_id, p.model, p.benchmark, p.layer, p.depth, p.mean_image_sum, p.mean_concentration, p.mean_concentration_x_sum
from layer_profile as p
join stg_runs as r using (run_id)
where p.query = $query
qualify r.shown_order = min(r.shown_order) over (partition by p.model, p.benchmark)
order by p.model, p.benchmark, p.layer
