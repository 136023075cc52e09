"""Contract review: what changed in proto/ between two versions, and whom it breaks.

    python -m contracts diff [BASE] [HEAD] [--format markdown|json] [--output FILE]

BASE defaults to the merge-base with main, HEAD to the working tree; any git refs work. Both
sides are compiled to descriptor sets with source info (snapshot), flattened to what a
reviewer reads (model), compared rule by rule (rules) and reported (report). The exit code is
1 when a breaking change is not acknowledged in contracts/acknowledged-changes.yaml, where each
acknowledgement names the rule and element and says why the break is accepted.
"""
