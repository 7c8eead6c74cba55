from calc import add

assert add(2, 3) == 5
assert add(-4, 4) == 0
assert add(0.5, 0.25) == 0.75
print("All tests passed")
