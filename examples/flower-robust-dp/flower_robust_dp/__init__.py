"""Example Flower app: a robust rule (Median or Krum) and central DP from flsec under a sign-flipping attack."""
