-- one row per run, sample, query, layer and head, with the derived concentration:
-- concentration = 1 - image_entropy / ln(n_image): 1 = all image attention on one token, 0 = uniform
-- (n_image is stored on every row and this view joins nothing: marts aggregate first, then join
-- the small runs and stg_layers views for model, benchmark, depth and stage)
select
    run_id,
    sample_idx,
    query,
    layer,
    head,
    n_image,
    image_sum,
    image_entropy,
    image_max,
    image_argmax,
    bos_sum,
    system_sum,
    prompt_sum,
    generated_sum,
    region_sum,
    region_entropy,
    case when n_image > 1 then 1 - image_entropy / ln(n_image) end as concentration,
    case when n_image > 1 then (1 - image_entropy / ln(n_image)) * image_sum end as concentration_x_sum
from head_metrics
