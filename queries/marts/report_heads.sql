-- Per head of every extraction run: mean image sum, concentration and their product, and the layer's
-- stage, for the report's heatmaps and scatter (Figs. 1, 10-11, 14-15).
select h.model, h.benchmark, h.layer, h.head, h.n_samples, h.mean_image_sum, h.mean_concentration, h.mean_concentration_x_sum, l.stage
from head_attention as h
left join stg_layers as l using (run_id, layer)
where h.query = $query
order by h.model, h.benchmark, h.layer, h.head
