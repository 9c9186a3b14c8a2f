-- From which layer the answer stays top-1, for the report's table.
select model, benchmark, query, n_layers, n_samples, median_settle_layer, round(share_settled_early, 3) as share_settled_early
from lens_settling
order by model, benchmark, query
