-- Median rank of the final answer per layer, for the report's curves.
select model, benchmark, query, layer, rank_median, share_at_top
from lens_convergence
order by model, benchmark, query, layer
