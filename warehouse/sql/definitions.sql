-- The definitions every number of attnwh is built from: the head scores, the stages of layers and
-- normalised depth. Each is one DuckDB macro, defined here and nowhere else: the warehouse builds
-- its per-part rollups (head_summary, head_ranks) from them at commit time, the staging views and
-- marts of attnwh.queries call them, and masking asks them which layers a stage holds. Editing a
-- formula here changes the definitions' version (the hash of this file): rollups of another version
-- are then bypassed, and marts recompute from head_metrics with the new formula.

-- concentration = 1 - image_entropy / ln(n_image): 1 = all image attention on one token, 0 = uniform
-- (undefined with fewer than two image tokens, and where the image gets no attention: a head whose window
-- does not reach the image is not "all on one token"; parts written before that stored entropy 0 there).
-- The study's exact form could not be confirmed; this normalised-entropy form is attnwh's default.
create or replace macro concentration(image_entropy, n_image, image_sum) as
    case when n_image > 1 and image_sum > 0 then 1 - image_entropy / ln(n_image) end;

-- the per-sample head scores that rank heads (visual heads, masking's top heads, pruning budgets): the
-- choices of every --score option and mart parameter
create or replace macro head_score_names() as ['image_sum', 'concentration', 'concentration_x_sum', 'region_hit'];

-- every per-sample value of a head that the rollups add up: the head scores, then the attention mass of
-- the other segments (segment_shares)
create or replace macro summarised_names() as list_concat(head_score_names(), ['bos_sum', 'system_sum', 'prompt_sum', 'generated_sum']);

-- the value of a head score or a summarised statistic (by name) for one head_metrics row m (pass the row:
-- `head_score('concentration', m)` with m a table alias), as a double; DuckDB reads only the columns used.
-- region_hit (SparseMM's criterion): 1 when the head's most-attended image token lies in the question's
-- boxes, 0 when it does not, null for samples without boxes and where the image gets no attention (no
-- most-attended image token); its mean is the share of samples hit
create or replace macro head_score(score, m) as
    case score
        when 'image_sum' then m.image_sum::double
        when 'concentration' then concentration(m.image_entropy, m.n_image, m.image_sum)
        -- no attention on the image: no concentration, and a product of 0 (the limit as the sum goes to 0)
        when 'concentration_x_sum' then case when m.n_image > 1 and m.image_sum = 0 then 0.0 else concentration(m.image_entropy, m.n_image, m.image_sum) * m.image_sum end
        when 'region_hit' then case when m.image_sum > 0 then m.region_hit::double end
        when 'bos_sum' then m.bos_sum::double
        when 'system_sum' then m.system_sum::double
        when 'prompt_sum' then m.prompt_sum::double
        when 'generated_sum' then m.generated_sum::double
    end;

-- the order of a sample's heads by a score: higher first, ties to the lower layer, then the lower head (a
-- struct that sorts in that order, descending). Only heads with a value are ordered: a head without one in a
-- sample (no image tokens, no boxes) holds no place there
create or replace macro head_order_key(score_value, layer, head) as
    {'score': score_value, 'layer': -layer, 'head': -head};

-- whether a score orders a sample's heads: region_hit is 0 or 1, so most of a sample's heads tie and their
-- places (the detection score) would be set by the tie-break (layer order), not by the heads; its mean (the
-- share of samples hit) is what ranks heads by it
create or replace macro score_orders_heads(score) as score <> 'region_hit';

-- the positive class of a benchmark's yes / no questions (precision, recall and F1 in yes_no_metrics): yes for POPE
-- (its evaluate.py) and the rest; no for AMBER's discriminative tasks, whose inference.py takes precision as (answered
-- no to a no question) / (answered no) and recall as (answered no to a no question) / (no questions)
create or replace macro yes_no_positive(benchmark) as
    case when benchmark like 'amber-%' then 'no' else 'yes' end;

-- places per sample that the head_ranks rollup keeps (visual_heads with a larger k reads head_metrics)
create or replace macro ranks_kept() as 64;

-- stages of the decoder: the reference study's split for 32 layers (0-9, 10-19, 20-31) and 40 layers
-- (0-12, 13-26, 27-39), otherwise thirds, rounded
create or replace macro stage(layer, n_layers) as
    case
        when layer < (case n_layers when 32 then 10 when 40 then 13 else cast(round(n_layers / 3) as integer) end) then 'early'
        when layer < (case n_layers when 32 then 20 when 40 then 27 else cast(round(2 * n_layers / 3) as integer) end) then 'mid'
        else 'late'
    end;

-- depth = layer / (n_layers - 1): 0 at the first layer, 1 at the last, for comparing models of different depth
create or replace macro depth(layer, n_layers) as
    case when n_layers > 1 then layer / (n_layers - 1) else 0 end;

-- the bucket of a generated step (``gen`` queries): steps 0 and 1 alone, then doubling buckets named by their
-- first step (2-3, 4-7, 8-15, ...), so that a long answer's fading attention has as many points per bucket
-- as early steps have, and the per-part rollups stay small however long the answers are
create or replace macro step_bucket(step) as
    case when step < 2 then step::smallint else (1 << floor(log2(step))::integer)::smallint end;

-- the kind of a generated token that rollups and marts compare: the first token of a word naming an object
-- in the image ('grounded') or not in it ('hallucinated'), or anything else ('other')
create or replace macro token_kind(word_start, object_status) as
    case when word_start and object_status in ('grounded', 'hallucinated') then object_status else 'other' end;
