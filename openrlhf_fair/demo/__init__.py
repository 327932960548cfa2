"""`openrlhf-fair demo`: train reward models with and without fairness on real pairs, then report."""
