-- Per layer on normalised depth: mean image sum, concentration and their product, for the report's cross-model profiles.
select model, benchmark, layer, depth, mean_image_sum, mean_concentration, mean_concentration_x_sum
from layer_profile
where query = $query
order by model, benchmark, layer
