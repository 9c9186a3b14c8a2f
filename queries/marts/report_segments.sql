-- Per layer: the mean share of attention on each token segment, for the report.
select model, benchmark, layer, image, bos, system, prompt, generated
from segment_shares
where query = $query
order by model, benchmark, layer
