#include <stdio.h>

int main(void) {
    puts("Hello from Bulwark!");
    return 0;
}
