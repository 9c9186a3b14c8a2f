-- one row per run, query, layer and head: the head's summarised values side by side (stg_head_scores, one
-- column group per value the marts of head attention, layer profiles and segment shares read by name).
-- n is the head's sample rows (every sample has an image sum); a score missing in some samples has its own count
-- (concentration: none where the image gets no attention, where concentration × sum is 0).
with scores as materialized (
    select * from stg_head_scores
)
select
    run_id,
    query,
    layer,
    head,
    max(n) filter (where score = 'image_sum') as n,
    max(n) filter (where score = 'concentration') as n_concentration,
    max(n) filter (where score = 'concentration_x_sum') as n_concentration_x_sum,
    max(total) filter (where score = 'image_sum') as sum_image,
    max(total_sq) filter (where score = 'image_sum') as sumsq_image,
    max(max_value) filter (where score = 'image_sum') as max_image,
    max(total) filter (where score = 'concentration') as sum_concentration,
    max(total_sq) filter (where score = 'concentration') as sumsq_concentration,
    max(total) filter (where score = 'concentration_x_sum') as sum_concentration_x_sum,
    max(total_sq) filter (where score = 'concentration_x_sum') as sumsq_concentration_x_sum,
    max(total) filter (where score = 'bos_sum') as sum_bos,
    max(total) filter (where score = 'system_sum') as sum_system,
    max(total) filter (where score = 'prompt_sum') as sum_prompt,
    max(total) filter (where score = 'generated_sum') as sum_generated,
    max(n) filter (where score = 'region_hit') as n_region_hit,
    max(total) filter (where score = 'region_hit') as sum_region_hit,
    max(total_sq) filter (where score = 'region_hit') as sumsq_region_hit
from scores
group by run_id, query, layer, head
