def average(numbers):
    return sum(numbers) / len(numbers)


print(average([2, 4, 6]))
