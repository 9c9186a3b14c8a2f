-- Per head: mean image sum, concentration and their product, and the layer's stage, for the report's heatmaps
-- and scatter (Figs. 1, 10-11, 14-15); per model and benchmark one extraction run, the first by shown_order
-- (stg_runs) with rows for the query.
select h.run_id, h.model, h.benchmark, h.layer, h.head, h.n_samples, h.mean_image_sum, h.mean_concentration, h.mean_concentration_x_sum, l.stage
from head_attention as h
left join stg_layers as l using (run_id, layer)
join stg_runs as r using (run_id)
where h.query = $query
qualify r.shown_order = min(r.shown_order) over (partition by h.model, h.benchmark)
order by h.model, h.benchmark, h.layer, h.head
