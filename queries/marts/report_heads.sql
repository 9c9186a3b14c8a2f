-- Per head of every extraction run: mean image sum, concentration and their product, for the report's heatmaps and scatter (Figs. 1, 10-11).
select model, benchmark, layer, head, n_samples, mean_image_sum, mean_concentration, mean_concentration_x_sum
from head_attention
where query = $query
order by model, benchmark, layer, head
