def fibonacci(n):
    """Return the n-th Fibonacci number (fibonacci(0) == 0, fibonacci(1) == 1)."""
    if n < 2:
        return n
    return 


def is_prime(n):
    """Return True if n is a prime number."""
    if n < 2:
        return False
    for k in range(2, int(n ** 0.5) + 1):
        if n % k == 0:
            return False
    return True


if __name__ == "__main__":
    print([fibonacci(i) for i in range(10)])
